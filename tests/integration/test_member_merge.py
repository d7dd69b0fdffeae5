"""Merging two member records of one person, over a real member service: an
operator's MergeMembers and the gateway's BindVerifiedPhone (a WeChat-verified phone
held by a member registered at the POS). Everything moves (identities, points lots
with their expiry, stored value, orders, growth and tier), nothing is counted twice,
the merged member takes no new activity, and a merge racing other writes loses
nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2
from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as mev
from pond.member.v1 import member_pb2 as pb

from services.runtime.auth import Role
from services.runtime.errors import error_details
from tests.conftest import MemberHarness, eventually

POS_PHONE = "13812345678"


def phone(value: str = POS_PHONE) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=value)


def unionid(value: str) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_UNIONID, value=value)


async def register(h: MemberHarness, *identities: pb.Identity, md=None, **fields) -> pb.Member:
    resp = await h.stub.RegisterMember(
        pb.RegisterMemberRequest(identities=list(identities), **fields), metadata=md or h.md())
    return resp.member


async def get(h: MemberHarness, member_id: str) -> pb.Member:
    return await h.stub.GetMember(pb.GetMemberRequest(member_id=member_id), metadata=h.md())


async def order(h: MemberHarness, member_id: str, order_id: str, fen: int, **extra):
    return await h.stub.RecordOrder(pb.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=4, amount_fen=fen,
        items=[pb.OrderItem(sku="cleanser", category="skincare", quantity=1,
                            unit_price_fen=fen)], **extra), metadata=h.md())


async def merge(h: MemberHarness, surviving_id: str, merged_id: str, md=None):
    return await h.stub.MergeMembers(pb.MergeMembersRequest(
        surviving_id=surviving_id, merged_id=merged_id, reason="duplicate at two stores"),
        metadata=md or h.md())


async def fails(call, code: grpc.StatusCode, reason: str = "") -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    got_reason, violations = error_details(info.value)
    if reason:
        assert got_reason == reason, info.value.details()
    return violations


async def all_points_entries(h: MemberHarness, member_id: str) -> list[pb.PointsEntry]:
    entries, token = [], ""
    while True:
        page = await h.stub.ListPointsEntries(pb.ListPointsEntriesRequest(
            member_id=member_id, page_size=100, page_token=token), metadata=h.md())
        entries += page.entries
        token = page.next_page_token
        if not token:
            return entries


async def order_ids(h: MemberHarness, member_id: str) -> set[str]:
    page = await h.stub.ListOrders(pb.ListOrdersRequest(member_id=member_id, page_size=100),
                                   metadata=h.md())
    return {o.id for o in page.orders}


async def expiring(h: MemberHarness, member_id: str) -> list[tuple[int, int]]:
    page = await h.stub.ListExpiringPoints(pb.ListExpiringPointsRequest(
        member_id=member_id, within_days=366, page_size=100), metadata=h.md())
    return sorted((e.expire_time.seconds, e.points) for e in page.expiring)


async def members_merged_events(redis) -> list[mev.MembersMerged]:
    out = []
    for _id, fields in await redis.xrange("pond.events.member"):
        event = event_pb2.Event.FromString(fields[b"e"])
        if event.type == "pond.events.v1.MembersMerged":
            payload = mev.MembersMerged()
            event.payload.Unpack(payload)
            out.append(payload)
    return out


# -- MergeMembers --------------------------------------------------------------

async def test_merge_moves_everything_once_and_closes_the_merged_member(
    member: MemberHarness, redis,
):
    h = member
    pos = await register(h, phone(), store_id="s1", guide_id="g1",
                         profile=pb.Profile(name="王小明"))
    app = await register(h, unionid("u-1"), profile=pb.Profile(birthday="1990-05-01",
                                                               city="杭州"))
    await order(h, pos.id, "o-pos", 30_000)
    # Paid 300 days ago: its points expire 65 days from now, on the survivor too.
    await order(h, app.id, "o-app", 20_000, paid_time=h.clock.now() - timedelta(days=300))
    await h.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
        member_id=app.id, amount_fen=5_000, idempotency_key="t-1"), metadata=h.md())
    pay = await h.stub.PayWithStoredValue(pb.PayWithStoredValueRequest(
        member_id=app.id, amount_fen=1_000, reference="bill", idempotency_key="p-1"),
        metadata=h.md())
    until = h.clock.now() + timedelta(days=30)
    await h.stub.SetPaidMembership(pb.SetPaidMembershipRequest(
        member_id=app.id, paid_until=until, idempotency_key="paid-1"), metadata=h.md())
    before_pos, before_app = await get(h, pos.id), await get(h, app.id)
    lots_before = sorted(await expiring(h, pos.id) + await expiring(h, app.id))

    survivor = (await merge(h, pos.id, app.id)).member

    assert survivor.id == pos.id
    assert survivor.points_balance == before_pos.points_balance + before_app.points_balance
    assert survivor.stored_value_fen == 4_000
    assert survivor.growth_value == before_pos.growth_value + before_app.growth_value
    assert survivor.paid_order_count == 2 and survivor.total_spent_fen == 50_000
    assert survivor.kind == pb.MEMBER_KIND_PAID and survivor.paid_until.seconds == int(
        until.timestamp())
    assert survivor.first_paid_at == before_app.first_paid_at
    assert survivor.last_paid_at == before_pos.last_paid_at
    # The survivor's profile wins; its empty fields are filled from the merged member.
    assert survivor.profile.name == "王小明" and survivor.profile.city == "杭州"
    assert survivor.profile.birthday == "1990-05-01" and survivor.store_id == "s1"
    assert sorted(i.kind for i in survivor.identities) == sorted(
        [pb.IDENTITY_KIND_PHONE, pb.IDENTITY_KIND_WECHAT_UNIONID])
    # Lots moved with their own expiry; ledgers and orders now the survivor's.
    assert await expiring(h, pos.id) == lots_before
    entries = await all_points_entries(h, pos.id)
    assert sum(e.delta for e in entries) == survivor.points_balance
    assert {e.member_id for e in entries} == {pos.id}
    assert await order_ids(h, pos.id) == {"o-pos", "o-app"}
    sv = await h.stub.ListStoredValueEntries(pb.ListStoredValueEntriesRequest(
        member_id=pos.id), metadata=h.md())
    assert sum(e.delta_fen for e in sv.entries) == 4_000
    # The identity finds the survivor.
    found = await h.stub.FindMember(pb.FindMemberRequest(identity=unionid("u-1")),
                                    metadata=h.md())
    assert found.id == pos.id

    # The merged member: kept, pointing to the survivor, nothing left.
    closed = await get(h, app.id)
    assert closed.merged_into == pos.id and not closed.identities
    assert (closed.points_balance, closed.stored_value_fen, closed.growth_value,
            closed.paid_order_count, closed.total_spent_fen) == (0, 0, 0, 0, 0)
    assert await order_ids(h, app.id) == set()
    assert await all_points_entries(h, app.id) == []

    # Merging the pair again changes nothing: the same survivor.
    again = (await merge(h, pos.id, app.id)).member
    assert again.points_balance == survivor.points_balance
    assert again.stored_value_fen == survivor.stored_value_fen
    assert again.paid_order_count == 2

    # Orders, refunds and payments from the merged member work on the survivor.
    got = await h.stub.GetOrder(pb.GetOrderRequest(order_id="o-app"), metadata=h.md())
    assert got.member_id == pos.id
    refund = await h.stub.RefundOrder(pb.RefundOrderRequest(
        order_id="o-app", refund_id="rf-1"), metadata=h.md())
    assert refund.member.id == pos.id and refund.points_reversed == got.points_earned
    assert refund.member.points_balance == survivor.points_balance - got.points_earned
    assert refund.member.paid_order_count == 1
    back = await h.stub.RefundStoredValuePayment(pb.RefundStoredValuePaymentRequest(
        member_id=pos.id, payment_entry_id=pay.id, amount_fen=1_000, idempotency_key="rp-1"),
        metadata=h.md())
    assert back.balance_after_fen == 5_000

    # One MembersMerged on the member stream, with the operator's reason.
    events = await eventually(lambda: members_merged_events(redis), lambda got: len(got) >= 1)
    assert [(e.surviving_id, e.merged_id, e.cause, e.reason) for e in events] == [
        (pos.id, app.id, "operator", "duplicate at two stores")]


async def test_moved_lots_expire_when_they_would_have(member: MemberHarness):
    h = member
    keep = await register(h, phone())
    gone = await register(h, unionid("u-old"))
    await order(h, keep.id, "o-new", 10_000)
    await order(h, gone.id, "o-old", 20_000, paid_time=h.clock.now() - timedelta(days=300))
    old_points = (await get(h, gone.id)).points_balance
    new_points = (await get(h, keep.id)).points_balance
    await merge(h, keep.id, gone.id)
    h.clock.advance(days=70)
    run = await h.stub.RunPointsExpiry(pb.RunPointsExpiryRequest(), metadata=h.md())
    assert run.points_expired == old_points
    assert (await get(h, keep.id)).points_balance == new_points


async def test_merge_reaches_a_tier_only_the_combined_growth_qualifies_for(
    member: MemberHarness,
):
    h = member
    a = await register(h, phone())
    b = await register(h, unionid("u-b"))
    await order(h, a.id, "o-a", 60_000)  # 600 growth each: silver needs 1000
    await order(h, b.id, "o-b", 60_000)
    assert (await get(h, a.id)).tier_level == 0
    survivor = (await merge(h, a.id, b.id)).member
    assert survivor.tier_level == 1
    changes = await h.stub.ListTierChanges(pb.ListTierChangesRequest(member_id=a.id),
                                           metadata=h.md())
    assert [(c.from_level, c.to_level, c.reason) for c in changes.changes] == [(0, 1, "merge")]


async def test_merge_never_lowers_a_tier(member: MemberHarness):
    h = member
    a = await register(h, phone())
    b = await register(h, unionid("u-b"))
    await order(h, b.id, "o-b", 600_000)  # gold on its own
    gold = (await get(h, b.id)).tier_level
    assert gold == 2
    survivor = (await merge(h, a.id, b.id)).member
    assert survivor.tier_level == gold


async def test_a_merged_member_is_no_longer_listed(member: MemberHarness):
    """Operators' member lists show people, not the records a merge closed (which
    GetMember still answers, naming the survivor)."""
    h = member
    a = await register(h, phone(), store_id="s1")
    b = await register(h, unionid("u-b"), store_id="s1")
    c = await register(h, unionid("u-c"), store_id="s1")

    async def listed(**flt) -> list[str]:
        resp = await h.stub.ListMembers(pb.ListMembersRequest(page_size=10, **flt),
                                        metadata=h.md())
        return [m.id for m in resp.members]

    assert await listed() == sorted([a.id, b.id, c.id])
    await merge(h, a.id, b.id)
    assert await listed() == sorted([a.id, c.id])
    assert await listed(store_id="s1") == sorted([a.id, c.id])
    assert (await get(h, b.id)).merged_into == a.id


async def test_merged_member_takes_no_activity(member: MemberHarness):
    h = member
    a = await register(h, phone())
    b = await register(h, unionid("u-b"))
    await order(h, b.id, "o-b", 10_000)
    await merge(h, a.id, b.id)
    md = h.md()
    calls = [
        h.stub.RedeemPoints(pb.RedeemPointsRequest(
            member_id=b.id, points=1, idempotency_key="r-1"), metadata=md),
        h.stub.AdjustPoints(pb.AdjustPointsRequest(
            member_id=b.id, delta=5, reason="fix", idempotency_key="a-1"), metadata=md),
        h.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
            member_id=b.id, amount_fen=100, idempotency_key="t-1"), metadata=md),
        h.stub.PayWithStoredValue(pb.PayWithStoredValueRequest(
            member_id=b.id, amount_fen=100, reference="x", idempotency_key="p-1"), metadata=md),
        h.stub.SetPaidMembership(pb.SetPaidMembershipRequest(
            member_id=b.id, paid_until=h.clock.now() + timedelta(days=3),
            idempotency_key="s-1"), metadata=md),
        h.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(id=b.id, profile=pb.Profile(city="x")),
            update_mask=field_mask_pb2.FieldMask(paths=["profile.city"])), metadata=md),
        h.stub.AddMemberIdentity(pb.AddMemberIdentityRequest(
            member_id=b.id, identity=unionid("u-new")), metadata=md),
        order(h, b.id, "o-after", 10_000),
    ]
    for call in calls:
        await fails(call, grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_MERGED")
    # A replay of an order recorded before the merge still answers as first recorded.
    replay = await order(h, b.id, "o-b", 10_000)
    assert replay.replayed and replay.order.id == "o-b"
    # The gateway acting for the merged member learns where it went.
    seen = await h.stub.GetMember(pb.GetMemberRequest(member_id=b.id),
                                  metadata=h.md(Role.GATEWAY, member_id=b.id))
    assert seen.merged_into == a.id
    assert (await get(h, a.id)).paid_order_count == 1


async def test_merge_refusals(member: MemberHarness):
    h = member
    a = await register(h, phone())
    b = await register(h, unionid("u-b"))
    c = await register(h, unionid("u-c"))
    await fails(merge(h, a.id, "m-nobody"), grpc.StatusCode.NOT_FOUND)
    await fails(merge(h, "m-nobody", a.id), grpc.StatusCode.NOT_FOUND)
    v = await fails(merge(h, a.id, a.id), grpc.StatusCode.INVALID_ARGUMENT)
    assert v[0][0] == "merged_id"
    v = await fails(merge(h, "", ""), grpc.StatusCode.INVALID_ARGUMENT)
    assert {f for f, _ in v} == {"surviving_id", "merged_id"}
    await merge(h, a.id, b.id)
    # Into a merged member, or a merged member into another: refused.
    await fails(merge(h, b.id, c.id), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_MERGED")
    await fails(merge(h, c.id, b.id), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_MERGED")
    # The survivor merged on: its merged member follows, one hop, never a chain.
    await merge(h, c.id, a.id)
    assert (await get(h, b.id)).merged_into == c.id
    assert (await get(h, a.id)).merged_into == c.id
    assert len((await get(h, c.id)).identities) == 3


@pytest.mark.parametrize("role", [Role.GUIDE, Role.SERVICE, Role.GATEWAY])
async def test_only_operators_merge(member: MemberHarness, role: Role):
    a = await register(member, phone())
    b = await register(member, unionid("u-b"))
    await fails(merge(member, a.id, b.id, md=member.md(role, member_id=b.id)),
                grpc.StatusCode.PERMISSION_DENIED)
    assert not (await get(member, b.id)).merged_into


# -- BindVerifiedPhone ----------------------------------------------------------

async def bind(h: MemberHarness, member_id: str, number: str, md=None):
    return await h.stub.BindVerifiedPhone(pb.BindVerifiedPhoneRequest(
        member_id=member_id, phone=number), metadata=md or h.md(Role.GATEWAY, member_id=member_id))


async def test_bind_a_free_phone_then_again_then_another(member: MemberHarness):
    h = member
    w = await register(h, unionid("u-w"), md=h.md(Role.GATEWAY))
    first = await bind(h, w.id, "+86 138-1234-5678")
    assert not first.merged and first.merged_id == "" and first.member.id == w.id
    assert [i.value for i in first.member.identities if i.kind == pb.IDENTITY_KIND_PHONE] == [
        "138****5678"]  # the gateway never sees a phone in clear
    again = await bind(h, w.id, POS_PHONE)
    assert not again.merged and len(again.member.identities) == 2
    # A newly verified phone replaces the old one, which is free again.
    other = await bind(h, w.id, "13900000000")
    phones = [i.value for i in (await get(h, w.id)).identities
              if i.kind == pb.IDENTITY_KIND_PHONE]
    assert not other.merged and phones == ["13900000000"]
    fresh = await register(h, phone(), unionid("u-x"))
    assert fresh.id != w.id


async def test_binding_a_pos_members_phone_merges_into_it(member: MemberHarness, redis):
    h = member
    pos = await register(h, phone(), store_id="s1", guide_id="g1",
                         md=h.md(Role.GUIDE))
    await order(h, pos.id, "o-pos", 30_000)
    w = await register(h, unionid("u-w"), md=h.md(Role.GATEWAY))
    # The customer typed another phone into the mini-program before (a claim only).
    await h.stub.AddMemberIdentity(pb.AddMemberIdentityRequest(
        member_id=w.id, identity=phone("13700000000")),
        metadata=h.md(Role.GATEWAY, member_id=w.id))
    await order(h, w.id, "o-mini", 10_000)
    total = (await get(h, pos.id)).points_balance + (await get(h, w.id)).points_balance

    bound = await bind(h, w.id, POS_PHONE)

    assert bound.merged and bound.merged_id == w.id and bound.member.id == pos.id
    assert bound.member.points_balance == total and bound.member.paid_order_count == 2
    assert bound.member.store_id == "s1"
    shown = {i.kind: i.value for i in bound.member.identities}
    assert shown[pb.IDENTITY_KIND_PHONE] == "138****5678"
    assert pb.IDENTITY_KIND_WECHAT_UNIONID in shown
    # The claimed phone was dropped, not moved: the verified one wins.
    survivor = await get(h, pos.id)
    assert [i.value for i in survivor.identities if i.kind == pb.IDENTITY_KIND_PHONE] == [
        POS_PHONE]
    await fails(h.stub.FindMember(pb.FindMemberRequest(identity=phone("13700000000")),
                                  metadata=h.md()), grpc.StatusCode.NOT_FOUND)
    # Signing in with the WeChat identity now finds the survivor.
    signed_in = await h.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("u-w")]), metadata=h.md(Role.GATEWAY))
    assert signed_in.member.id == pos.id and not signed_in.created
    # A retry of the same binding (the gateway still acting for w) answers the same.
    replay = await bind(h, w.id, POS_PHONE)
    assert (replay.merged, replay.merged_id, replay.member.id) == (True, w.id, pos.id)
    assert replay.member.points_balance == total
    # Done for the survivor, a no-op.
    mine = await bind(h, pos.id, POS_PHONE)
    assert not mine.merged and mine.member.id == pos.id
    events = await eventually(lambda: members_merged_events(redis), lambda got: len(got) >= 1)
    assert [(e.surviving_id, e.merged_id, e.cause) for e in events] == [(pos.id, w.id, "phone")]


async def test_bind_refusals(member: MemberHarness):
    h = member
    a = await register(h, unionid("u-a"))
    b = await register(h, unionid("u-b"))
    await fails(bind(h, "m-nobody", POS_PHONE, md=h.md()), grpc.StatusCode.NOT_FOUND)
    v = await fails(bind(h, a.id, "12345"), grpc.StatusCode.INVALID_ARGUMENT)
    assert v[0][0] == "phone"
    # The gateway acts for its member only, the guide not at all.
    await fails(bind(h, b.id, POS_PHONE, md=h.md(Role.GATEWAY, member_id=a.id)),
                grpc.StatusCode.PERMISSION_DENIED)
    await fails(bind(h, a.id, POS_PHONE, md=h.md(Role.GUIDE)),
                grpc.StatusCode.PERMISSION_DENIED)
    # Back office may bind.
    done = await bind(h, a.id, POS_PHONE, md=h.md(Role.SERVICE))
    assert done.member.identities[-1].value == POS_PHONE
    # A merged member binds nothing new.
    await merge(h, a.id, b.id)
    await fails(bind(h, b.id, "13900000000"), grpc.StatusCode.FAILED_PRECONDITION,
                "MEMBER_MERGED")


# -- races ------------------------------------------------------------------------

async def test_merge_racing_redeems_and_orders_loses_and_doubles_nothing(
    member: MemberHarness,
):
    """Redemptions and orders on both members run back to back while the merge lands:
    each call on the merged member lands wholly before the merge (and moves with it)
    or is refused after it; none is lost or counted twice."""
    h = member
    a = await register(h, phone())
    b = await register(h, unionid("u-b"))
    await order(h, a.id, "seed-a", 100_000)
    await order(h, b.id, "seed-b", 100_000)
    merged, warmed, hammers = asyncio.Event(), asyncio.Event(), 4
    counts = {"warm": 0}

    async def attempt(call):
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            assert error_details(err)[0] == "MEMBER_MERGED"
            return None

    def call(kind: str, who: str, i: int):
        if kind == "redeem":
            return h.stub.RedeemPoints(pb.RedeemPointsRequest(
                member_id=who, points=7, idempotency_key=f"r-{who}-{i}"), metadata=h.md())
        return order(h, who, f"o-{who}-{i}", 1_000 + i)

    async def hammer(kind: str, who: str) -> list:
        """Calls one after another until one made after the merge finished."""
        out, i = [], 0
        while True:
            after_merge = merged.is_set()
            out.append(await attempt(call(kind, who, i)))
            i += 1
            if i == 3:
                counts["warm"] += 1
                if counts["warm"] == hammers:
                    warmed.set()
            if after_merge:
                return out

    async def merging() -> None:
        await warmed.wait()  # every hammer has landed calls before the merge
        await merge(h, a.id, b.id)
        merged.set()

    done = await asyncio.gather(*(hammer(k, w) for k in ("redeem", "order")
                                  for w in (a.id, b.id)), merging())
    runs = done[:hammers]
    for (kind, who), out in zip([(k, w) for k in ("redeem", "order") for w in (a.id, b.id)],
                                runs, strict=True):
        assert all(r is not None for r in out[:3]), kind
        # The last call was made after the merge: refused on the merged member only.
        assert (out[-1] is None) == (who == b.id), (kind, who == b.id)
    results = [r for out in runs for r in out]

    survivor, closed = await get(h, a.id), await get(h, b.id)
    assert closed.merged_into == a.id and closed.points_balance == 0
    entries = await all_points_entries(h, a.id)
    assert sum(e.delta for e in entries) == survivor.points_balance
    assert await all_points_entries(h, b.id) == []
    landed_orders = [r for r in results if isinstance(r, pb.RecordOrderResponse)]
    assert survivor.paid_order_count == 2 + len(landed_orders)
    assert survivor.total_spent_fen == 200_000 + sum(r.order.amount_fen for r in landed_orders)
    earned = sum(r.order.points_earned for r in landed_orders)
    redeemed = sum(-r.delta for r in results if isinstance(r, pb.PointsEntry))
    seeds = 2 * 1000  # 1000 yuan each, one point a yuan, entry tier
    assert survivor.points_balance == seeds + earned - redeemed
    assert len(await order_ids(h, a.id)) == survivor.paid_order_count
