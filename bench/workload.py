"""The requests the benchmark sends: members to seed, GetMember by random id,
RecordOrder with a unique order id, a random member and 1-3 items, and the Member
the echo server answers with. Seeded by a fixed number so runs are comparable."""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import count

from google.protobuf.timestamp_pb2 import Timestamp
from pond.common.v1 import common_pb2
from pond.member.v1 import member_pb2 as pb

CITIES = ("上海", "杭州", "北京", "深圳", "成都", "南京", "武汉", "苏州")
SURNAMES = "王李张刘陈杨黄赵吴周"
CATEGORIES = ("fruit", "dairy", "bakery", "snacks", "drinks", "frozen")


def register_request(i: int, rng: random.Random) -> pb.RegisterMemberRequest:
    """A member as the POS or the mini-program registers one: phone and unionid,
    a profile, a store and guide, two marketing consents."""
    return pb.RegisterMemberRequest(
        identities=[
            pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=f"139{i:08d}"),
            pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_UNIONID, value=f"oU-bench-{i:010d}"),
        ],
        profile=pb.Profile(
            name=f"{rng.choice(SURNAMES)}{i % 97:02d}",
            gender=rng.choice((1, 2)),
            birthday=f"19{rng.randint(70, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            city=rng.choice(CITIES),
        ),
        store_id=f"store-{rng.randint(1, 200):03d}",
        guide_id=f"guide-{rng.randint(1, 800):04d}",
        acquisition_channel=common_pb2.CHANNEL_STORE_POS,
        consents=[
            pb.Consent(channel=common_pb2.CONTACT_CHANNEL_SMS, granted=True),
            pb.Consent(channel=common_pb2.CONTACT_CHANNEL_WECHAT, granted=rng.random() < 0.7),
        ],
    )


def echo_member(real: pb.Member) -> pb.Member:
    """The echo server's answer: a real seeded member, with the purchase fields a
    consuming member carries filled in, so it is no smaller than a typical GetMember."""
    m = pb.Member()
    m.CopyFrom(real)
    now = Timestamp()
    now.GetCurrentTime()
    m.kind = pb.MEMBER_KIND_CONSUMING
    m.growth_value, m.points_balance = 1_288, 1_288
    m.paid_order_count, m.total_spent_fen = 7, 128_800
    m.first_paid_at.CopyFrom(now)
    m.last_paid_at.CopyFrom(now)
    return m


def get_member_requests(
    member_ids: list[str], rng: random.Random
) -> Callable[[], pb.GetMemberRequest]:
    requests = [pb.GetMemberRequest(member_id=mid) for mid in member_ids]
    return lambda: rng.choice(requests)


def record_order_requests(
    member_ids: list[str], rng: random.Random, tag: str
) -> Callable[[], pb.RecordOrderRequest]:
    numbers = count(1)
    skus = [
        (f"sku-{n:05d}", CATEGORIES[n % len(CATEGORIES)], 500 + 37 * n % 9_500) for n in range(500)
    ]

    def make() -> pb.RecordOrderRequest:
        items = []
        for sku, category, price in rng.sample(skus, rng.randint(1, 3)):
            items.append(
                pb.OrderItem(
                    sku=sku, category=category, quantity=rng.randint(1, 3), unit_price_fen=price
                )
            )
        return pb.RecordOrderRequest(
            order_id=f"bench-{tag}-{next(numbers):08d}",
            member_id=rng.choice(member_ids),
            channel=common_pb2.CHANNEL_STORE_POS,
            store_id=f"store-{rng.randint(1, 200):03d}",
            guide_id=f"guide-{rng.randint(1, 800):04d}",
            items=items,
            amount_fen=sum(i.quantity * i.unit_price_fen for i in items),
        )

    return make
