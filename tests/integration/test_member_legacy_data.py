"""A member.db written before the document store (tests/fixtures: made by that code)
is copied into the new layout when the service opens it, once, and the service
carries on over the API as if nothing happened."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import grpc
from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc

from services.member.server import start_member_service
from services.runtime.clock import ManualClock
from tests.conftest import MemberHarness, eventually, member_settings

FIXTURE = Path(__file__).parent.parent / "fixtures" / "member_before_documents.sql"
PHONE_A, PHONE_B = "13812345678", "13900000000"


def phone(value: str) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=value)


async def start(tmp_path, redis_url: str, clock: ManualClock) -> MemberHarness:
    service = await start_member_service(member_settings(tmp_path, redis_url), clock=clock,
                                         port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    return MemberHarness(service, channel, member_pb2_grpc.MemberServiceStub(channel), clock)


async def stop(h: MemberHarness) -> None:
    await h.channel.close()
    await h.service.stop(0)


async def test_an_old_member_db_is_copied_once_and_works(tmp_path, redis_url: str, redis):
    old = sqlite3.connect(tmp_path / "member.db")
    old.executescript(FIXTURE.read_text())
    old.close()
    clock = ManualClock(datetime(2026, 2, 28, 2, 0, tzinfo=UTC))
    h = await start(tmp_path, redis_url, clock)
    try:
        a = await h.stub.FindMember(pb.FindMemberRequest(identity=phone(PHONE_A)), metadata=h.md())
        assert (a.profile.name, a.points_balance, a.tier_level) == ("旧会员", 1400, 1)
        assert a.identities[0].value == PHONE_A  # decrypts as before
        b = await h.stub.FindMember(pb.FindMemberRequest(identity=phone(PHONE_B)), metadata=h.md())
        assert b.stored_value_fen == 10_000
        orders = await h.stub.ListOrders(pb.ListOrdersRequest(member_id=a.id), metadata=h.md())
        assert [o.id for o in orders.orders] == ["legacy-o-1", "legacy-o-0"]
        entries = await h.stub.ListPointsEntries(pb.ListPointsEntriesRequest(member_id=a.id),
                                                 metadata=h.md())
        assert [e.delta for e in entries.entries] == [100, -100, 800, 600]
        # The unpublished events go out.
        await eventually(lambda: redis.xlen("pond.events.member"), lambda n: n >= 11)

        # Writes carry on over the copied documents: identities still bind, the
        # member's and the orders' versions guard, birthdays are found, new tier
        # changes are numbered after the copied one.
        again = await h.stub.RegisterMember(
            pb.RegisterMemberRequest(identities=[phone(PHONE_A)]), metadata=h.md())
        assert again.created is False and again.member.id == a.id
        refund = await h.stub.RefundOrder(pb.RefundOrderRequest(
            order_id="legacy-o-0", refund_id="rf-1"), metadata=h.md())
        assert refund.order.refunded_fen == 60_000
        # This year's birthday gift was given before the upgrade; next year's is found.
        gifts = await h.stub.GrantBirthdayGifts(pb.GrantBirthdayGiftsRequest(), metadata=h.md())
        assert gifts.members_gifted == 0
        clock.set(datetime(2027, 2, 28, 2, 0, tzinfo=UTC))
        gifts = await h.stub.GrantBirthdayGifts(pb.GrantBirthdayGiftsRequest(), metadata=h.md())
        assert gifts.members_gifted == 1
        up = await h.stub.RecordOrder(pb.RecordOrderRequest(
            order_id="new-o", member_id=a.id, channel=4, amount_fen=500_000), metadata=h.md())
        assert up.member.tier_level == 2
        changes = await h.stub.ListTierChanges(pb.ListTierChangesRequest(member_id=a.id),
                                               metadata=h.md())
        assert [(c.from_level, c.to_level) for c in changes.changes] == [(1, 2), (0, 1)]
    finally:
        await stop(h)
    assert (tmp_path / "member.db.migrated").exists()

    h = await start(tmp_path, redis_url, clock)  # copied once: nothing doubles
    try:
        orders = await h.stub.ListOrders(pb.ListOrdersRequest(member_id=a.id), metadata=h.md())
        assert [o.id for o in orders.orders] == ["new-o", "legacy-o-1", "legacy-o-0"]
        got = await h.stub.GetMember(pb.GetMemberRequest(member_id=a.id), metadata=h.md())
        assert got.points_balance == up.member.points_balance
    finally:
        await stop(h)
