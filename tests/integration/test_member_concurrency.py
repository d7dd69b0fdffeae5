"""Many concurrent writes to one member and one order over a real grpc.aio server: a
refund never takes more than the order is worth, the member's totals always agree
with what the orders record, and contention on one member never becomes a failure
within one process (one replica) -- only rules refuse a call."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from pond.member.v1 import member_pb2 as pb

from services.member.store import MemberStore
from services.runtime.errors import error_details
from tests.conftest import MemberHarness, member_replicas

MEMBERS = 8
ORDERS_PER_MEMBER = 5  # 40 orders
REFUNDS_PER_ORDER = 10
REPLICAS = 4
ORDER_FEN = 10_000  # 100 points, 100 growth
# order id -> the accepted refunds of it, as (fen, points reversed)
Accepted = dict[str, list[tuple[int, int]]]


async def outcome(call) -> tuple[grpc.StatusCode, object]:
    """OK and the response, or the error's code and reason."""
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), error_details(exc)[0]


async def register(h: MemberHarness, n: int) -> str:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(identities=[
        pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=f"1380000{n:04d}")]), metadata=h.md())
    return resp.member.id


async def record(h: MemberHarness, member_id: str, order_id: str) -> None:
    await h.stub.RecordOrder(pb.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=4, amount_fen=ORDER_FEN,
        items=[pb.OrderItem(sku="tea", category="tea", quantity=1, unit_price_fen=ORDER_FEN)]),
        metadata=h.md())


class NetworkedStore:
    """The member store with reads that take a round trip (a hop to a thread and back)
    before they run, as a networked database's do: SQLite answers key lookups without
    yielding, which would hide races between one call's reads and another's commit."""

    def __init__(self, inner: MemberStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not (name.startswith("get_") or name == "open_lots"):
            return attr

        async def read(*args, **kwargs):
            await asyncio.to_thread(int)  # a round trip
            return await attr(*args, **kwargs)

        return read


@pytest_asyncio.fixture
async def replicas(tmp_path, redis_url: str, redis) -> AsyncIterator[list[MemberHarness]]:
    """Four member services (replicas: each with its own process-local state) over one
    database, with networked reads."""
    async with member_replicas(tmp_path, redis_url, REPLICAS, NetworkedStore) as harnesses:
        yield harnesses


async def refund_storm(replicas: list[MemberHarness]
                       ) -> tuple[dict[str, list[str]], Accepted, Counter]:
    """40 orders (8 members x 5), then 10 refunds of each at once (all 400 together,
    spread over the replicas): full refunds for half the orders, 6,000 fen for the other
    half (only one of those fits). Returns the members' orders, the accepted refunds
    (fen, points reversed) by order and the count of each refusal code."""
    h = replicas[0]
    members: dict[str, list[str]] = {}
    for n in range(MEMBERS):
        member_id = await register(h, n)
        members[member_id] = [f"o-{n}-{k}" for k in range(ORDERS_PER_MEMBER)]
        for order_id in members[member_id]:
            await record(h, member_id, order_id)
    order_ids = [o for orders in members.values() for o in orders]
    calls = []
    for i, order_id in enumerate(order_ids):
        fen = ORDER_FEN if i % 2 else 6_000
        for r in range(REFUNDS_PER_ORDER):
            stub = replicas[(i + r) % len(replicas)].stub
            calls.append((order_id, fen, stub.RefundOrder(pb.RefundOrderRequest(
                order_id=order_id, refund_id=f"rf-{order_id}-{r}", refund_fen=fen),
                metadata=h.md())))
    results = await asyncio.gather(*(outcome(call) for _, _, call in calls))
    accepted: Accepted = {o: [] for o in order_ids}
    refused: Counter = Counter()
    for (order_id, fen, _), (code, resp) in zip(calls, results, strict=True):
        if code is grpc.StatusCode.OK:
            accepted[order_id].append((fen, resp.points_reversed))
        else:
            refused[code] += 1
    return members, accepted, refused


async def assert_consistent(h: MemberHarness, members: dict[str, list[str]],
                            accepted: Accepted) -> None:
    """No order refunded past its amount; each records exactly the refunds accepted
    (fen and points reversed); each member's totals and points ledger agree with its
    orders."""
    for member_id, order_ids in members.items():
        spent = growth = points = count = reversed_points = 0
        for order_id in order_ids:
            fens = [fen for fen, _ in accepted[order_id]]
            assert sum(fens) <= ORDER_FEN, (order_id, fens)
            o = await h.stub.GetOrder(pb.GetOrderRequest(order_id=order_id), metadata=h.md())
            assert o.refunded_fen == sum(fens), (order_id, fens)
            assert o.points_reversed == sum(p for _, p in accepted[order_id]), order_id
            spent += o.amount_fen - o.refunded_fen
            growth += o.growth_earned - o.growth_reversed
            points += o.points_earned - o.points_reversed
            count += int(o.refunded_fen < o.amount_fen)
            reversed_points += o.points_reversed
        m = await h.stub.GetMember(pb.GetMemberRequest(member_id=member_id), metadata=h.md())
        assert (m.total_spent_fen, m.growth_value, m.points_balance, m.paid_order_count) == (
            spent, growth, points, count), member_id
        entries = await h.stub.ListPointsEntries(pb.ListPointsEntriesRequest(
            member_id=member_id, page_size=100), metadata=h.md())
        assert -sum(e.delta for e in entries.entries
                    if e.kind == pb.POINTS_ENTRY_KIND_REVERSE) == reversed_points
        assert sum(e.delta for e in entries.entries) == m.points_balance


async def test_concurrent_refunds_of_one_order_never_exceed_it(replicas: list[MemberHarness]):
    members, accepted, refused = await refund_storm(replicas[:1])
    # One refund of each order fits (a full one, or 6,000 of 10,000 fen); the rest
    # are refused by the rules, none for contention.
    assert all(len(refunds) == 1 for refunds in accepted.values()), accepted
    assert set(refused) == {grpc.StatusCode.FAILED_PRECONDITION}, refused
    await assert_consistent(replicas[0], members, accepted)


async def test_concurrent_refunds_across_replicas_never_exceed_the_order(
        replicas: list[MemberHarness]):
    # Across replicas only the store's guards order the writes: the member's version
    # and the order's refunds.
    members, accepted, refused = await refund_storm(replicas)
    assert all(len(refunds) <= 1 for refunds in accepted.values()), accepted
    assert set(refused) <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
    await assert_consistent(replicas[1], members, accepted)


async def test_contention_on_one_members_points_is_never_a_failure(member: MemberHarness):
    member_id = await register(member, 1)
    await member.stub.AdjustPoints(pb.AdjustPointsRequest(
        member_id=member_id, delta=100, reason="stock", idempotency_key="seed"),
        metadata=member.md())
    results = await asyncio.gather(*(outcome(member.stub.RedeemPoints(pb.RedeemPointsRequest(
        member_id=member_id, points=1, reason="coupon", idempotency_key=f"r-{i}"),
        metadata=member.md())) for i in range(200)))
    codes = Counter(code for code, _ in results)
    assert codes == {grpc.StatusCode.OK: 100, grpc.StatusCode.FAILED_PRECONDITION: 100}, codes
    assert {reason for code, reason in results if code is not grpc.StatusCode.OK} == {
        "INSUFFICIENT_POINTS"}
    m = await member.stub.GetMember(pb.GetMemberRequest(member_id=member_id),
                                    metadata=member.md())
    assert m.points_balance == 0


async def test_contention_on_one_members_stored_value_is_never_a_failure(
        member: MemberHarness):
    member_id = await register(member, 1)
    await member.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
        member_id=member_id, amount_fen=100, idempotency_key="seed"), metadata=member.md())
    results = await asyncio.gather(*(outcome(member.stub.PayWithStoredValue(
        pb.PayWithStoredValueRequest(member_id=member_id, amount_fen=1, reference=f"bill-{i}",
                                     idempotency_key=f"p-{i}"),
        metadata=member.md())) for i in range(200)))
    codes = Counter(code for code, _ in results)
    assert codes == {grpc.StatusCode.OK: 100, grpc.StatusCode.FAILED_PRECONDITION: 100}, codes
    assert {reason for code, reason in results if code is not grpc.StatusCode.OK} == {
        "INSUFFICIENT_BALANCE"}
    m = await member.stub.GetMember(pb.GetMemberRequest(member_id=member_id),
                                    metadata=member.md())
    assert m.stored_value_fen == 0
    entries = await member.stub.ListStoredValueEntries(pb.ListStoredValueEntriesRequest(
        member_id=member_id, page_size=500), metadata=member.md())
    assert sum(e.delta_fen for e in entries.entries) == 0 and len(entries.entries) == 101
