"""Property test of merging two members, driven through MemberApp (the real use
cases) on a real member store over SQLite: two members get random histories (orders
paid at random times, some long ago, redemptions, partial refunds, stored-value
top-ups and payments), then one is merged into the other. Nothing is lost and
nothing counted twice: the survivor's points, stored value, order count, spending and
growth are the sums of both; every open lot keeps its expiry and remaining points;
the survivor's ledgers sum to its balances; and when time moves on, the expiry job
expires exactly what both members' lots would have."""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pond.member.v1 import member_pb2 as pb

from services.member import convert
from services.member.api import RECORD_ORDER, REFUND_ORDER
from services.member.app import MemberApp
from services.member.domain.members import IdentityKind
from services.member.ledgers_api import PAY, REDEEM, TOP_UP
from services.member.service import LoyaltyRules, NewIdentity
from services.member.store import open_store
from services.runtime.clock import ManualClock, timestamp_pb
from services.runtime.crypto import FieldCipher
from services.runtime.errors import FailedPrecondition

VALID_DAYS = 60
START = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
TMP_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# One step of a member's history: ("order", fen, paid days ago), ("redeem", points),
# ("refund", percent of the latest order), ("top_up", fen), ("pay", fen).
step = st.one_of(
    st.tuples(st.just("order"), st.integers(100, 900_000), st.integers(0, 90)),
    st.tuples(st.just("redeem"), st.integers(1, 3_000)),
    st.tuples(st.just("refund"), st.integers(1, 100)),
    st.tuples(st.just("top_up"), st.integers(1, 100_000)),
    st.tuples(st.just("pay"), st.integers(1, 100_000)),
)
history = st.lists(step, max_size=8)


class World:
    def __init__(self, app: MemberApp, clock: ManualClock) -> None:
        self.app, self.clock = app, clock
        self.serial = 0

    def key(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    async def play(self, member_id: str, steps: list[tuple]) -> None:
        app, last_order = self.app, ""
        for kind, *args in steps:
            self.clock.advance(hours=1)
            try:
                if kind == "order":
                    fen, days_ago = args
                    last_order = self.key("o")
                    request = pb.RecordOrderRequest(order_id=last_order, member_id=member_id,
                                                    channel=4, amount_fen=fen)
                    paid = self.clock.now() - timedelta(days=days_ago)
                    request.paid_time.CopyFrom(timestamp_pb(paid))
                    await app.record_order(
                        order_id=last_order, member_id=member_id, channel=4, store_id="",
                        guide_id="", items=(), amount_fen=fen, paid_at=paid,
                        call=RECORD_ORDER.call(request, lambda r: pb.RecordOrderResponse()))
                elif kind == "refund" and last_order:
                    order = await app.order(last_order)
                    fen = max(1, order.amount_fen * args[0] // 100)
                    request = pb.RefundOrderRequest(order_id=last_order,
                                                    refund_id=self.key("r"), refund_fen=fen)
                    await app.refund_order(last_order, request.refund_id, fen, REFUND_ORDER.call(
                        request, lambda r: pb.RefundOrderResponse()))
                elif kind == "redeem":
                    request = pb.RedeemPointsRequest(member_id=member_id, points=args[0],
                                                     idempotency_key=self.key("k"))
                    await app.redeem_points(member_id, args[0], "", REDEEM.call(
                        request, convert.points_entry_pb))
                elif kind == "top_up":
                    request = pb.TopUpStoredValueRequest(member_id=member_id, amount_fen=args[0],
                                                         idempotency_key=self.key("k"))
                    await app.top_up(member_id, args[0], 0, "", TOP_UP.call(
                        request, convert.sv_entry_pb))
                elif kind == "pay":
                    request = pb.PayWithStoredValueRequest(member_id=member_id,
                                                           amount_fen=args[0], reference="x",
                                                           idempotency_key=self.key("k"))
                    await app.pay(member_id, args[0], "x", PAY.call(request, convert.sv_entry_pb))
            except FailedPrecondition:
                pass  # not enough points or balance, refund of a refunded order: a no-op


async def scenario(a_steps: list[tuple], b_steps: list[tuple], later_days: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pond-merge-", dir=TMP_DIR) as tmp:
        store = await open_store(sqlite_path=str(Path(tmp) / "member.db"))
        try:
            clock = ManualClock(START)
            app = MemberApp(store, clock, FieldCipher(b"k" * 32),
                            LoyaltyRules(points_valid_days=VALID_DAYS))
            world = World(app, clock)
            ids = []
            for phone in ("13812345678", "13912345678"):
                m, _ = await app.register([NewIdentity(IdentityKind.PHONE, phone)], {})
                ids.append(m.id)
            await world.play(ids[0], a_steps)
            await world.play(ids[1], b_steps)
            await check_merge(app, store, clock, ids[0], ids[1], later_days)
        finally:
            await store.close()


async def check_merge(app, store, clock, a_id: str, b_id: str, later_days: int) -> None:
    a, b = await store.get_member(a_id), await store.get_member(b_id)
    lots = {lot.id: lot for mid in (a_id, b_id) for lot in await store.open_lots(mid)}
    orders = {mid: await store.list_orders(mid, "", 10_000) for mid in (a_id, b_id)}

    survivor = await app.merge_members(a_id, b_id, "property")

    closed = await store.get_member(b_id)
    assert closed.merged_into == a_id and not closed.identities
    assert (closed.points_balance, closed.stored_value_fen, closed.paid_order_count) == (0, 0, 0)
    assert survivor.points_balance == a.points_balance + b.points_balance
    assert survivor.stored_value_fen == a.stored_value_fen + b.stored_value_fen
    assert survivor.paid_order_count == a.paid_order_count + b.paid_order_count
    assert survivor.total_spent_fen == a.total_spent_fen + b.total_spent_fen
    assert survivor.growth_value == a.growth_value + b.growth_value
    assert survivor.tier_level >= max(a.tier_level, b.tier_level)
    # Every open lot is the survivor's, with its own expiry and remaining points.
    moved = {lot.id: lot for lot in await store.open_lots(a_id)}
    assert await store.open_lots(b_id) == []
    assert set(moved) == set(lots)
    for lot_id, lot in moved.items():
        before = lots[lot_id]
        assert (lot.expires_at, lot.remaining, lot.earned_at, lot.order_id) == (
            before.expires_at, before.remaining, before.earned_at, before.order_id)
    # The survivor's ledgers sum to its balances; the merged member's are empty.
    points = await store.list_points_entries(a_id, "", 100_000)
    assert sum(e.delta for e in points) == survivor.points_balance
    assert sum(lot.remaining for lot in moved.values()) == survivor.points_balance
    stored = await store.list_stored_value_entries(a_id, "", 100_000)
    assert sum(e.delta_fen for e in stored) == survivor.stored_value_fen
    assert await store.list_points_entries(b_id, "", 10) == []
    assert await store.list_stored_value_entries(b_id, "", 10) == []
    owned = {o.id for o in await store.list_orders(a_id, "", 100_000)}
    assert owned == {o.id for mid in orders for o in orders[mid]}
    # A second merge of the pair changes nothing.
    again = await app.merge_members(a_id, b_id, "property")
    assert (again.points_balance, again.stored_value_fen, again.version) == (
        survivor.points_balance, survivor.stored_value_fen, survivor.version)

    # Later, the expiry job expires exactly what both members' lots would have.
    clock.advance(days=later_days)
    due = sum(lot.remaining for lot in lots.values() if lot.expires_at <= clock.now())
    _members, expired, _announced = await asyncio.wait_for(app.run_points_expiry(7), 30)
    assert expired == due
    after = await store.get_member(a_id)
    assert after.points_balance == survivor.points_balance - due


@settings(max_examples=100, deadline=None)
@given(a=history, b=history, later_days=st.integers(0, 2 * VALID_DAYS))
def test_a_merge_loses_nothing_and_counts_nothing_twice(a, b, later_days):
    asyncio.run(scenario(a, b, later_days))
