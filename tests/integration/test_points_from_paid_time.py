"""Points earned by an order count their validity from when the order was paid, not
from when it was recorded: a POS history imported late earns points that expire on
time, and points of an order paid so long ago that they have already expired are
written to the ledger and expired at once, never spendable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from pond.member.v1 import member_pb2 as pb

from services.runtime.errors import error_details
from tests.conftest import MemberHarness

VALID = timedelta(days=365)  # POND_POINTS_VALID_DAYS, default


def when(ts) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


async def register(h: MemberHarness, phone: str) -> str:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(identities=[
        pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=phone)]), metadata=h.md())
    return resp.member.id


async def record(h: MemberHarness, member_id: str, order_id: str, paid: datetime):
    req = pb.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=4, amount_fen=10_000,
        items=[pb.OrderItem(sku="tea", category="tea", quantity=1, unit_price_fen=10_000)])
    req.paid_time.FromDatetime(paid)
    return await h.stub.RecordOrder(req, metadata=h.md())


async def entries(h: MemberHarness, member_id: str) -> list[pb.PointsEntry]:
    resp = await h.stub.ListPointsEntries(pb.ListPointsEntriesRequest(member_id=member_id),
                                          metadata=h.md())
    return list(resp.entries)


async def expiring(h: MemberHarness, member_id: str, days: int) -> list[pb.ExpiringPoints]:
    resp = await h.stub.ListExpiringPoints(pb.ListExpiringPointsRequest(
        member_id=member_id, within_days=days), metadata=h.md())
    return list(resp.expiring)


async def test_points_of_a_late_recorded_order_expire_a_validity_after_it_was_paid(
        member: MemberHarness):
    m = await register(member, "13800000001")
    paid = member.clock.now() - timedelta(days=364)
    resp = await record(member, m, "pos-364", paid)
    assert resp.member.points_balance == 100
    (earn,) = await entries(member, m)
    assert (earn.kind, earn.delta) == (pb.POINTS_ENTRY_KIND_EARN, 100)
    assert when(earn.expire_time) == paid + VALID  # a day from now, not a year
    (soon,) = await expiring(member, m, 2)
    assert (soon.points, when(soon.expire_time)) == (100, paid + VALID)
    # Two days on, the expiry run takes them.
    member.clock.advance(days=2)
    run = await member.stub.RunPointsExpiry(pb.RunPointsExpiryRequest(), metadata=member.md())
    assert (run.members_expired, run.points_expired) == (1, 100)
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=m), metadata=member.md())
    assert got.points_balance == 0


async def test_points_already_past_their_expiry_are_recorded_and_expired_at_once(
        member: MemberHarness):
    m = await register(member, "13800000002")
    now = member.clock.now()
    await record(member, m, "pos-today", now)  # 100 points, valid a year
    paid = now - timedelta(days=400)
    resp = await record(member, m, "pos-400", paid)
    # The order earned its points (the ledger shows them), but they had expired before
    # they were recorded: the balance never holds them.
    assert resp.order.points_earned == 100
    assert resp.member.points_balance == 100
    expired, earned, *_ = await entries(member, m)  # newest first
    assert (earned.kind, earned.delta, earned.balance_after, earned.order_id) == (
        pb.POINTS_ENTRY_KIND_EARN, 100, 200, "pos-400")
    assert when(earned.expire_time) == paid + VALID
    assert (expired.kind, expired.delta, expired.balance_after) == (
        pb.POINTS_ENTRY_KIND_EXPIRE, -100, 100)
    # Only today's lot is left to expire.
    assert [when(e.expire_time) for e in await expiring(member, m, 366)] == [now + VALID]
    # Not spendable: only today's 100 points are there.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await member.stub.RedeemPoints(pb.RedeemPointsRequest(
            member_id=m, points=101, idempotency_key="r-1"), metadata=member.md())
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(info.value)[0] == "INSUFFICIENT_POINTS"
    # Nothing left for the expiry run.
    run = await member.stub.RunPointsExpiry(pb.RunPointsExpiryRequest(), metadata=member.md())
    assert (run.members_expired, run.points_expired) == (0, 0)
