"""Idempotent member RPCs over a real grpc.aio server (services.runtime.idempotency):
a replay returns the FIRST response unchanged, whatever happened since; the same key
with other parameters is refused; phones in a kept response are shown as the
replaying caller may see them; records expire after the retention and the host's
hourly prune job removes them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from mongomock_motor import AsyncMongoMockClient
from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc
from prometheus_client import REGISTRY

from services.member.server import start_member_service
from services.member.store import open_store
from services.runtime.auth import Role
from services.runtime.clock import ManualClock
from services.runtime.errors import error_details
from tests.conftest import MemberHarness, eventually, member_settings

PHONE = "13812345678"


async def register(h: MemberHarness) -> str:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(identities=[
        pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=PHONE)]), metadata=h.md())
    return resp.member.id


async def refused(call, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert error_details(info.value)[0] == reason


def record_order(member_id: str, order_id: str = "o-1", fen: int = 10_000):
    return pb.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=4, amount_fen=fen,
        items=[pb.OrderItem(sku="tea", category="tea", quantity=1, unit_price_fen=fen)])


async def something_else(h: MemberHarness, member_id: str) -> None:
    """Changes the member (name, points, growth, stored value) after a first call."""
    mask = field_mask_pb2.FieldMask(paths=["profile.name"])
    await h.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(id=member_id, profile=pb.Profile(name="changed")), update_mask=mask),
        metadata=h.md())
    await h.stub.RecordOrder(record_order(member_id, "o-other", 20_000), metadata=h.md())
    await h.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
        member_id=member_id, amount_fen=3_000, idempotency_key="top-other"), metadata=h.md())


async def test_a_replayed_set_paid_membership_returns_the_member_as_of_the_first_call(
        member: MemberHarness):
    m = await register(member)
    request = pb.SetPaidMembershipRequest(member_id=m, idempotency_key="sub-1")
    request.paid_until.FromDatetime(member.clock.now() + timedelta(days=30))
    first = await member.stub.SetPaidMembership(request, metadata=member.md())
    await something_else(member, m)
    now = await member.stub.GetMember(pb.GetMemberRequest(member_id=m), metadata=member.md())
    assert now.profile.name == "changed" and now.points_balance != first.points_balance
    replay = await member.stub.SetPaidMembership(request, metadata=member.md())
    assert replay == first
    later = pb.SetPaidMembershipRequest(member_id=m, idempotency_key="sub-1")
    later.paid_until.FromDatetime(member.clock.now() + timedelta(days=60))
    await refused(member.stub.SetPaidMembership(later, metadata=member.md()),
                  grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")


Prepare = Callable[[MemberHarness, str], Awaitable[object]]


async def _nothing(h: MemberHarness, member_id: str) -> None:
    return None


async def _with_points(h: MemberHarness, member_id: str) -> None:
    await h.stub.RecordOrder(record_order(member_id, "o-seed", 50_000), metadata=h.md())


async def _with_balance(h: MemberHarness, member_id: str) -> None:
    await h.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
        member_id=member_id, amount_fen=50_000, idempotency_key="seed"), metadata=h.md())


async def _with_payment(h: MemberHarness, member_id: str) -> str:
    await _with_balance(h, member_id)
    paid = await h.stub.PayWithStoredValue(pb.PayWithStoredValueRequest(
        member_id=member_id, amount_fen=20_000, reference="bill", idempotency_key="pay-seed"),
        metadata=h.md())
    return paid.id


# method, what the member needs first, the request (given the member id and what
# prepare returned), and a field to change for a refused reuse of the key
CASES: list[tuple[str, Prepare, Callable, str]] = [
    ("RedeemPoints", _with_points, lambda m, _: pb.RedeemPointsRequest(
        member_id=m, points=100, idempotency_key="k"), "points"),
    ("AdjustPoints", _nothing, lambda m, _: pb.AdjustPointsRequest(
        member_id=m, delta=40, reason="goodwill", idempotency_key="k"), "delta"),
    ("TopUpStoredValue", _nothing, lambda m, _: pb.TopUpStoredValueRequest(
        member_id=m, amount_fen=10_000, bonus_fen=500, idempotency_key="k"), "amount_fen"),
    ("PayWithStoredValue", _with_balance, lambda m, _: pb.PayWithStoredValueRequest(
        member_id=m, amount_fen=1_000, reference="bill-1", idempotency_key="k"), "amount_fen"),
    ("RefundStoredValuePayment", _with_payment, lambda m, pay: pb.RefundStoredValuePaymentRequest(
        member_id=m, payment_entry_id=pay, amount_fen=500, idempotency_key="k"), "amount_fen"),
    ("RecordOrder", _nothing, lambda m, _: record_order(m), "amount_fen"),
    ("RefundOrder", _with_points, lambda m, _: pb.RefundOrderRequest(
        order_id="o-seed", refund_id="rf-1", refund_fen=10_000), "refund_fen"),
]


@pytest.mark.parametrize(("method", "prepare", "make", "changed"), CASES,
                         ids=[c[0] for c in CASES])
async def test_a_replay_returns_the_first_response_unchanged(
        member: MemberHarness, method: str, prepare: Prepare, make, changed: str):
    m = await register(member)
    request = make(m, await prepare(member, m))
    rpc = getattr(member.stub, method)
    first = await rpc(request, metadata=member.md())
    await something_else(member, m)
    before = await member.stub.GetMember(pb.GetMemberRequest(member_id=m), metadata=member.md())
    replay = await rpc(request, metadata=member.md())
    if method == "RecordOrder":
        assert first.replayed is False and replay.replayed is True
        replay.replayed = False
    assert replay == first
    after = await member.stub.GetMember(pb.GetMemberRequest(member_id=m), metadata=member.md())
    assert after == before  # a replay changes nothing
    other = type(request)()
    other.CopyFrom(request)
    setattr(other, changed, getattr(request, changed) + 1)
    await refused(rpc(other, metadata=member.md()),
                  grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")


async def test_a_replay_shows_phones_as_the_replaying_caller_may_see_them(
        member: MemberHarness):
    m = await register(member)
    request = record_order(m)
    first = await member.stub.RecordOrder(request, metadata=member.md(Role.OPERATOR))
    assert first.member.identities[0].value == PHONE
    as_guide = await member.stub.RecordOrder(request, metadata=member.md(Role.GUIDE))
    assert as_guide.replayed and as_guide.member.identities[0].value == "138****5678"
    as_operator = await member.stub.RecordOrder(request, metadata=member.md(Role.OPERATOR))
    assert as_operator.member.identities[0].value == PHONE
    by_guide = await member.stub.RecordOrder(record_order(m, "o-2"),
                                             metadata=member.md(Role.GUIDE))
    assert by_guide.member.identities[0].value == "138****5678"
    again = await member.stub.RecordOrder(record_order(m, "o-2"),
                                          metadata=member.md(Role.OPERATOR))
    assert again.member.identities[0].value == PHONE


@pytest_asyncio.fixture
async def short_memory(tmp_path, redis_url: str, redis) -> AsyncIterator[MemberHarness]:
    """A member service that keeps idempotency records for two days, with its scheduled
    jobs on (the host's prune job among them)."""
    clock = ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    settings = member_settings(tmp_path, redis_url, idempotency_retention_days=2,
                               jobs_enabled=True)
    service = await start_member_service(settings, clock=clock, port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield MemberHarness(service, channel, member_pb2_grpc.MemberServiceStub(channel), clock)
    finally:
        await channel.close()
        await service.stop(0)


def prune_runs() -> float:
    return REGISTRY.get_sample_value("pond_job_runs_total", {
        "service": "member", "job": "prune-records", "outcome": "succeeded"}) or 0.0


async def run_prune_job(h: MemberHarness) -> None:
    """Moves on to the clock's time: the host's hourly prune job runs once."""
    runs = prune_runs()
    h.service.host.wake_timers_and_jobs()
    await eventually(lambda: asyncio.sleep(0, prune_runs()), lambda n: n == runs + 1)


async def test_records_expire_after_the_retention_and_maintenance_prunes_them(
        short_memory: MemberHarness):
    h = short_memory
    m = await register(h)
    await h.stub.RecordOrder(record_order(m), metadata=h.md())
    await h.stub.RefundOrder(pb.RefundOrderRequest(order_id="o-1", refund_id="rf-1",
                                                   refund_fen=1_000), metadata=h.md())
    adjust = pb.AdjustPointsRequest(member_id=m, delta=40, reason="goodwill",
                                    idempotency_key="k")
    first = await h.stub.AdjustPoints(adjust, metadata=h.md())

    h.clock.advance(days=1)  # within the retention: still replayed
    await run_prune_job(h)
    assert await h.stub.AdjustPoints(adjust, metadata=h.md()) == first

    h.clock.advance(days=1, seconds=1)  # past it: pruned, the key is new again
    await run_prune_job(h)
    again = await h.stub.AdjustPoints(adjust, metadata=h.md())
    assert again.id != first.id and again.balance_after == first.balance_after + 40
    other = pb.AdjustPointsRequest(member_id=m, delta=41, reason="goodwill",
                                   idempotency_key="k")
    await refused(h.stub.AdjustPoints(other, metadata=h.md()),
                  grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    # Orders know their own ids and refunds: neither is applied twice.
    replay = await h.stub.RecordOrder(record_order(m), metadata=h.md())
    assert replay.replayed and replay.order.refunded_fen == 1_000
    await refused(h.stub.RecordOrder(record_order(m, fen=9_999), metadata=h.md()),
                  grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    await refused(h.stub.RefundOrder(pb.RefundOrderRequest(
        order_id="o-1", refund_id="rf-1", refund_fen=1_000), metadata=h.md()),
        grpc.StatusCode.FAILED_PRECONDITION, "REFUND_ALREADY_RECORDED")


@pytest_asyncio.fixture
async def on_mongo(tmp_path, redis_url: str, redis) -> AsyncIterator[MemberHarness]:
    """The member service over the MongoDB engine (mongomock-motor)."""
    clock = ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    store = await open_store(mongo_database=AsyncMongoMockClient()[f"t_{uuid.uuid4().hex}"])
    service = await start_member_service(member_settings(tmp_path, redis_url), clock=clock,
                                         port=0, metrics=False, store=store)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield MemberHarness(service, channel, member_pb2_grpc.MemberServiceStub(channel), clock)
    finally:
        await channel.close()
        await service.stop(0)


async def test_the_same_on_the_mongodb_engine(on_mongo: MemberHarness):
    h = on_mongo
    m = await register(h)
    request = pb.SetPaidMembershipRequest(member_id=m, idempotency_key="sub-1")
    request.paid_until.FromDatetime(h.clock.now() + timedelta(days=30))
    first = await h.stub.SetPaidMembership(request, metadata=h.md())
    await something_else(h, m)
    assert await h.stub.SetPaidMembership(request, metadata=h.md()) == first
    recorded = await h.stub.RecordOrder(record_order(m), metadata=h.md(Role.GUIDE))
    replay = await h.stub.RecordOrder(record_order(m), metadata=h.md(Role.OPERATOR))
    assert replay.replayed and replay.order == recorded.order
    assert replay.member.identities[0].value == PHONE
    assert recorded.member.identities[0].value == "138****5678"
    await refused(h.stub.RecordOrder(record_order(m, fen=1), metadata=h.md()),
                  grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
