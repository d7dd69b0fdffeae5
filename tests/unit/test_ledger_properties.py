"""Property test of the two money-like ledgers, driven through MemberApp (the real use
cases) on a real member store over SQLite: random sequences of orders, redemptions,
adjustments, expiry sweeps, order refunds, stored-value top-ups, payments, payment
refunds and replays. After every step each ledger must agree with itself: the member's
balance is the sum of its entries and (for points) of its lots' remaining points,
never negative, and every entry's balance_after is the running total."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf import message
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from pond.member.v1 import member_pb2 as pb

from services.member import convert
from services.member.api import RECORD_ORDER, REFUND_ORDER
from services.member.app import MemberApp
from services.member.domain import orders as do
from services.member.domain import points as dp
from services.member.domain.members import IdentityKind, MemberKind
from services.member.domain.orders import OrderItem
from services.member.domain.points import Lot, PointsEntry, PointsEntryKind
from services.member.domain.stored_value import (
    MAX_BALANCE_FEN,
    StoredValueEntry,
    StoredValueEntryKind,
)
from services.member.domain.tiers import DEFAULT_PROGRAM
from services.member.ledgers_api import ADJUST, PAY, REDEEM, REFUND_PAYMENT, TOP_UP
from services.member.service import LoyaltyRules, NewIdentity
from services.member.store import MemberStore, open_store
from services.runtime.clock import ManualClock
from services.runtime.crypto import FieldCipher
from services.runtime.errors import FailedPrecondition, PondError

VALID_DAYS = 30
RECORDS_KEPT = timedelta(days=36_500)
REMIND_DAYS = 7
SWEEP_TIMEOUT = 30.0  # seconds; a sweep takes milliseconds
PAGE = 7  # small, so listing every entry crosses page boundaries
PHONES = ("13812345678", "13912345678")
# A tmpfs when there is one: the ledgers are under test here, not the disk's fsync.
TMP_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def share(part: int, whole: int) -> str:
    return "none" if part == 0 else "all" if part == whole else "some"


@dataclass(frozen=True)
class Call:
    """A value-moving call that succeeded: its request (parameters and key) and what
    it returned, to be replayed."""

    request: message.Message
    result: tuple
    # record_order says whether it replayed: a replay must say so.
    replayed: bool | None = None


@dataclass(frozen=True)
class Payment:
    who: int
    entry_id: str
    fen: int


class LedgerMachine(RuleBasedStateMachine):
    orders = Bundle("orders")
    payments = Bundle("payments")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = tempfile.TemporaryDirectory(prefix="pond-ledger-", dir=TMP_DIR)
        self.clock = ManualClock()
        self.store: MemberStore = self.run(
            open_store(sqlite_path=str(Path(self.tmp.name) / "member.db")))
        # Replays are checked across the whole run, while time moves on by up to 40
        # days a step: the idempotency records (first responses) outlive the run.
        self.app = MemberApp(self.store, self.clock, FieldCipher(b"k" * 32),
                             LoyaltyRules(points_valid_days=VALID_DAYS),
                             idempotency_retention=RECORDS_KEPT)
        self.members: list[str] = []
        for phone in PHONES:
            m, created = self.run(self.app.register([NewIdentity(IdentityKind.PHONE, phone)], {}))
            assert created
            self.members.append(m.id)
        # Entry ids per member in the order they were written (ids sort by wall-clock
        # millisecond, so within one millisecond their order says nothing).
        self.points_log: list[list[str]] = [[] for _ in self.members]
        self.sv_log: list[list[str]] = [[] for _ in self.members]
        self.payment_refunded: dict[str, int] = {}
        self.calls: list[Call] = []
        self.serial = 0

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()
            self.tmp.cleanup()

    # -- plumbing --
    def run(self, coro):
        return self.runner.run(coro)

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    async def points_entries(self, member_id: str, page_size: int = 10_000
                             ) -> list[PointsEntry]:
        out: list[PointsEntry] = []
        before = ""
        while True:
            page = await self.store.list_points_entries(member_id, before, page_size)
            assert [e.id for e in page] == sorted((e.id for e in page), reverse=True)
            out += page
            if len(page) < page_size:
                return out
            before = page[-1].id

    async def sv_entries(self, member_id: str, page_size: int = 10_000
                         ) -> list[StoredValueEntry]:
        out: list[StoredValueEntry] = []
        before = ""
        while True:
            page = await self.store.list_stored_value_entries(member_id, before, page_size)
            assert [e.id for e in page] == sorted((e.id for e in page), reverse=True)
            out += page
            if len(page) < page_size:
                return out
            before = page[-1].id

    async def spendable(self, who: int) -> int:
        now = self.clock.now()
        return sum(lot.remaining for lot in await self.store.open_lots(self.members[who])
                   if lot.expires_at > now)

    async def snapshot(self) -> tuple:
        """Everything a call could change, for both members (and the outbox)."""
        state = []
        for mid in self.members:
            m = await self.store.get_member(mid)
            lots = sorted((x.id, x.remaining, x.announced) for x in await self.store.open_lots(mid))
            orders = sorted((o.id, tuple(r.refund_id for r in o.refunds))
                            for o in await self.store.list_orders(mid, "", 10_000))
            state.append((
                m.version, m.points_balance, m.stored_value_fen, m.growth_value,
                m.tier_level, m.kind, m.paid_order_count, m.total_spent_fen,
                sorted(e.id for e in await self.points_entries(mid)),
                sorted(e.id for e in await self.sv_entries(mid)), lots, orders,
            ))
        state.append(len(await self.store.docs.outbox_pending(1_000_000)))
        return tuple(state)

    async def sweep(self) -> tuple[int, int, int]:
        """The expiry job, bounded: it loops until no member has due lots, so a lot it
        fails to expire would otherwise hang the test rather than fail it."""
        return await asyncio.wait_for(self.app.run_points_expiry(REMIND_DAYS), SWEEP_TIMEOUT)

    async def new_points_entries(self, who: int) -> list[PointsEntry]:
        """Entries written since the log was last brought up to date (the callers
        expect one call's entries: at most two), oldest first, now appended to it.
        Ids from one process sort in the order they were made."""
        known = set(self.points_log[who])
        fresh = [e for e in await self.points_entries(self.members[who]) if e.id not in known]
        fresh.reverse()
        self.points_log[who] += [e.id for e in fresh]
        return fresh

    async def invoke(self, request: message.Message) -> tuple:
        """Calls the use case a request stands for, the way api.py does, and returns
        what identifies its result."""
        app = self.app
        event(f"call {type(request).__name__}")
        if isinstance(request, pb.RecordOrderRequest):
            response = await app.record_order(
                order_id=request.order_id, member_id=request.member_id,
                channel=request.channel, store_id=request.store_id,
                guide_id=request.guide_id,
                items=tuple(OrderItem(i.sku, i.category, i.quantity, i.unit_price_fen)
                            for i in request.items),
                amount_fen=request.amount_fen,
                paid_at=(request.paid_time.ToDatetime(tzinfo=UTC)
                         if request.HasField("paid_time") else None),
                call=RECORD_ORDER.call(request, lambda r: pb.RecordOrderResponse(
                    order=convert.order_pb(r[0]), replayed=r[2])))
            o = response.order
            return (o.id, o.points_earned, o.growth_earned), response.replayed
        if isinstance(request, pb.RefundOrderRequest):
            response = await app.refund_order(
                request.order_id, request.refund_id, request.refund_fen,
                REFUND_ORDER.call(request, lambda r: pb.RefundOrderResponse(
                    order=convert.order_pb(r[0]), points_reversed=r[2], growth_reversed=r[3])))
            refund = (await self.store.get_order(request.order_id)).refund(request.refund_id)
            assert refund is not None
            return (refund.refund_id, refund.fen, response.points_reversed,
                    response.growth_reversed), None
        if isinstance(request, pb.RedeemPointsRequest):
            e = await app.redeem_points(request.member_id, request.points, request.reason,
                                        REDEEM.call(request, convert.points_entry_pb))
        elif isinstance(request, pb.AdjustPointsRequest):
            e = await app.adjust_points(request.member_id, request.delta, request.reason,
                                        ADJUST.call(request, convert.points_entry_pb))
        elif isinstance(request, pb.TopUpStoredValueRequest):
            e = await app.top_up(request.member_id, request.amount_fen, request.bonus_fen,
                                 request.reference, TOP_UP.call(request, convert.sv_entry_pb))
        elif isinstance(request, pb.PayWithStoredValueRequest):
            e = await app.pay(request.member_id, request.amount_fen, request.reference,
                              PAY.call(request, convert.sv_entry_pb))
        elif isinstance(request, pb.RefundStoredValuePaymentRequest):
            e = await app.refund_payment(request.member_id, request.payment_entry_id,
                                         request.amount_fen,
                                         REFUND_PAYMENT.call(request, convert.sv_entry_pb))
        else:
            raise AssertionError(f"no use case for {type(request).__name__}")
        return (e.id,), None

    def expect_rejection(self, request: message.Message, reason: str) -> None:
        """The call fails with FAILED_PRECONDITION `reason` and changes nothing."""
        before = self.run(self.snapshot())
        try:
            self.run(self.invoke(request))
        except PondError as exc:
            assert isinstance(exc, FailedPrecondition), exc
            assert exc.reason == reason, exc
            event(f"refused {reason}")
        else:
            raise AssertionError(f"{type(request).__name__} should have failed with {reason}")
        assert self.run(self.snapshot()) == before

    # -- a ledger with something in it from the start --
    @initialize(target=orders)
    def opening_order(self) -> str:
        return self.record_order(0, 80_000)

    @initialize(target=payments)
    def opening_payment(self) -> Payment:
        self.top_up(1, 100_000, 10_000)
        return self.pay(1, 30_000)

    # -- points --
    @rule(target=orders, who=st.integers(0, 1),
          amount=st.one_of(st.integers(1, 99), st.integers(100, 60_000)),
          paid_days_ago=st.one_of(st.none(), st.integers(0, 2 * VALID_DAYS)))
    def record_order(self, who: int, amount: int, paid_days_ago: int | None = None) -> str:
        """An order paid now, or `paid_days_ago` (recorded late: its points count their
        validity from when it was paid, and expire at once if that is already past)."""
        mid = self.members[who]
        before = self.run(self.store.get_member(mid))
        order_id = self.next_id("o")
        request = pb.RecordOrderRequest(
            order_id=order_id, member_id=mid, channel=1, store_id="s1", amount_fen=amount,
            items=[pb.OrderItem(sku="sku-1", category="tea", quantity=1, unit_price_fen=amount)])
        now = self.clock.now()
        paid = now
        if paid_days_ago is not None:
            paid = now - timedelta(days=paid_days_ago)
            request.paid_time.FromDatetime(paid)
        expires = paid + timedelta(days=VALID_DAYS)
        stale = expires <= now
        (_, points, growth), replayed = self.run(self.invoke(request))
        assert not replayed
        multiplier = DEFAULT_PROGRAM.tier(before.tier_level).points_multiplier_permille
        assert points == dp.points_for_order(amount, 1, multiplier)
        assert growth == do.growth_for_order(amount, 1)
        after = self.run(self.store.get_member(mid))
        assert after.points_balance == before.points_balance + (0 if stale else points)
        assert after.growth_value == before.growth_value + growth
        # Upgrades at once on the growth of orders paid within the evaluation window.
        since = DEFAULT_PROGRAM.window_start(self.clock.now())
        qualifying = sum(o.growth_earned - o.growth_reversed
                         for o in self.run(self.store.list_orders(mid, "", 10_000))
                         if o.paid_at >= since)
        assert after.tier_level == max(before.tier_level,
                                       DEFAULT_PROGRAM.qualifying_level(qualifying))
        fresh = self.run(self.new_points_entries(who))
        if points:
            entry, *expired = fresh
            assert (entry.kind, entry.delta, entry.order_id) == (PointsEntryKind.EARN, points,
                                                                 order_id)
            assert entry.expires_at == expires
            if stale:
                event("order points expired on arrival")
                (lapse,) = expired
                assert (lapse.kind, lapse.delta, lapse.taken) == (
                    PointsEntryKind.EXPIRE, -points, ((entry.id, points),))
            else:
                assert expired == []
                lot = next(x for x in self.run(self.store.open_lots(mid)) if x.id == entry.id)
                assert (lot.earned_at, lot.expires_at, lot.remaining) == (paid, expires, points)
        else:
            assert fresh == []
        self.calls.append(Call(request, (order_id, points, growth), replayed=True))
        return order_id

    @rule(who=st.integers(0, 1), points=st.integers(1, 400))
    def redeem(self, who: int, points: int) -> None:
        mid = self.members[who]
        request = pb.RedeemPointsRequest(member_id=mid, points=points, reason="gift",
                                         idempotency_key=self.next_id("k"))
        if points > self.run(self.spendable(who)):
            self.expect_rejection(request, "INSUFFICIENT_POINTS")
            return
        before = self.run(self.store.get_member(mid))
        result, _ = self.run(self.invoke(request))
        entry = self.run(self.store.get_points_entry(result[0]))
        assert (entry.kind, entry.delta) == (PointsEntryKind.REDEEM, -points)
        assert self.run(self.store.get_member(mid)).points_balance == (
            before.points_balance - points)
        self.points_log[who].append(entry.id)
        self.calls.append(Call(request, result))

    @rule(who=st.integers(0, 1),
          delta=st.one_of(st.integers(-400, -1), st.integers(1, 400)))
    def adjust(self, who: int, delta: int) -> None:
        mid = self.members[who]
        request = pb.AdjustPointsRequest(member_id=mid, delta=delta, reason="service recovery",
                                         idempotency_key=self.next_id("k"))
        if -delta > self.run(self.spendable(who)):
            self.expect_rejection(request, "INSUFFICIENT_POINTS")
            return
        before = self.run(self.store.get_member(mid))
        result, _ = self.run(self.invoke(request))
        entry = self.run(self.store.get_points_entry(result[0]))
        assert (entry.kind, entry.delta) == (PointsEntryKind.ADJUST, delta)
        if delta > 0:
            assert entry.expires_at == self.clock.now() + timedelta(days=VALID_DAYS)
        assert self.run(self.store.get_member(mid)).points_balance == (
            before.points_balance + delta)
        self.points_log[who].append(entry.id)
        self.calls.append(Call(request, result))

    @rule(days=st.integers(1, 40), sweep=st.booleans())
    def advance_clock(self, days: int, sweep: bool) -> None:
        """Time passes; lots past their expiry stay unspendable until the sweep."""
        now = self.clock.advance(days=days)
        if not sweep:
            return
        due = [sum(x.remaining for x in self.run(self.store.open_lots(mid)) if x.expires_at <= now)
               for mid in self.members]
        balances = [self.run(self.store.get_member(mid)).points_balance for mid in self.members]
        members, points, _announced = self.run(self.sweep())
        assert (members, points) == (sum(1 for d in due if d), sum(due))
        for who, mid in enumerate(self.members):
            assert self.run(self.store.get_member(mid)).points_balance == balances[who] - due[who]
            fresh = self.run(self.new_points_entries(who))
            if due[who]:
                (entry,) = fresh
                assert (entry.kind, entry.delta) == (PointsEntryKind.EXPIRE, -due[who])
            else:
                assert fresh == []
            for lot in self.run(self.store.open_lots(mid)):
                assert lot.expires_at > now
                if lot.expires_at <= now + timedelta(days=REMIND_DAYS):
                    assert lot.announced, lot
        # Running it again finds nothing to do.
        before = self.run(self.snapshot())
        assert self.run(self.sweep()) == (0, 0, 0)
        assert self.run(self.snapshot()) == before

    @rule(order_id=orders, percent=st.one_of(st.just(0), st.integers(1, 110)))
    def refund_order(self, order_id: str, percent: int) -> None:
        """Refunds `percent` of the order's amount (0: everything left)."""
        o = self.run(self.store.get_order(order_id))
        who = self.members.index(o.member_id)
        fen = percent and max(1, o.amount_fen * percent // 100)
        refund_id = self.next_id("r")
        request = pb.RefundOrderRequest(order_id=order_id, refund_id=refund_id, refund_fen=fen)
        left = o.amount_fen - o.refunded_fen
        if left == 0:
            self.expect_rejection(request, "ORDER_FULLY_REFUNDED")
            return
        if fen > left:
            self.expect_rejection(request, "REFUND_EXCEEDS_ORDER")
            return
        plan = do.plan_refund(o, refund_id, fen, self.clock.now())
        before = self.run(self.store.get_member(o.member_id))
        now = self.clock.now()
        own = [x for x in self.run(self.store.open_lots(o.member_id))
               if x.order_id == order_id and x.expires_at > now]
        expect_reversed = min(plan.points, self.run(self.spendable(who)))
        result, _ = self.run(self.invoke(request))
        assert result == (refund_id, plan.fen, expect_reversed, plan.growth)
        after = self.run(self.store.get_member(o.member_id))
        assert after.points_balance == before.points_balance - expect_reversed
        assert after.growth_value == before.growth_value - plan.growth
        assert after.total_spent_fen == before.total_spent_fen - plan.fen
        fully = plan.fen == left
        assert after.paid_order_count == before.paid_order_count - int(fully)
        fresh = self.run(self.new_points_entries(who))
        if expect_reversed:
            (entry,) = fresh
            assert (entry.kind, entry.delta, entry.order_id) == (
                PointsEntryKind.REVERSE, -expect_reversed, order_id)
            if own:  # the order's own points go back first
                assert entry.taken[0] == (own[0].id, min(own[0].remaining, expect_reversed))
        else:
            assert fresh == []
        stored = self.run(self.store.get_order(order_id))
        assert stored.refunded_fen == o.refunded_fen + plan.fen
        if fully:
            assert stored.points_reversed == stored.points_earned
            assert stored.growth_reversed == stored.growth_earned
        self.calls.append(Call(request, result))

    # -- many calls at once --
    def all_at_once(self, requests: list[message.Message]) -> list[tuple | BaseException]:
        async def gather() -> list:
            return await asyncio.gather(*(self.invoke(r) for r in requests),
                                        return_exceptions=True)

        results = self.run(gather())
        for result in results:
            # Contention is never a failure (ABORTED): only the rules refuse a call.
            if isinstance(result, BaseException) and not (
                    isinstance(result, FailedPrecondition)):
                raise result
        return results

    @rule(who=st.integers(0, 1), calls=st.integers(2, 8), points=st.integers(1, 80))
    def concurrent_redeems(self, who: int, calls: int, points: int) -> None:
        """Redemptions at once: as many succeed as the spendable points cover, the
        rest are INSUFFICIENT_POINTS."""
        mid = self.members[who]
        spendable = self.run(self.spendable(who))
        before = self.run(self.store.get_member(mid))
        requests = [pb.RedeemPointsRequest(member_id=mid, points=points, reason="rush",
                                           idempotency_key=self.next_id("k"))
                    for _ in range(calls)]
        results = self.all_at_once(requests)
        done = [(r, res) for r, res in zip(requests, results, strict=True)
                if not isinstance(res, BaseException)]
        assert all(res.reason == "INSUFFICIENT_POINTS"
                   for res in results if isinstance(res, PondError))
        assert len(done) == min(calls, spendable // points)
        event(f"concurrent redeems: {share(len(done), calls)} succeeded")
        after = self.run(self.store.get_member(mid))
        assert after.points_balance == before.points_balance - len(done) * points
        fresh = self.run(self.new_points_entries(who))
        assert sorted(e.id for e in fresh) == sorted(res[0][0] for _, res in done)
        assert all((e.kind, e.delta) == (PointsEntryKind.REDEEM, -points) for e in fresh)
        self.calls += [Call(r, res[0]) for r, res in done]

    @rule(order_id=orders, calls=st.integers(2, 6), percent=st.integers(1, 100))
    def concurrent_refunds(self, order_id: str, calls: int, percent: int) -> None:
        """Refunds of one order at once (distinct refund ids): together never more than
        the order; as many land as what is left covers."""
        o = self.run(self.store.get_order(order_id))
        who = self.members.index(o.member_id)
        fen = max(1, o.amount_fen * percent // 100)
        left = o.amount_fen - o.refunded_fen
        requests = [pb.RefundOrderRequest(order_id=order_id, refund_id=self.next_id("r"),
                                          refund_fen=fen) for _ in range(calls)]
        results = self.all_at_once(requests)
        done = [(r, res) for r, res in zip(requests, results, strict=True)
                if not isinstance(res, BaseException)]
        assert all(res.reason in ("REFUND_EXCEEDS_ORDER", "ORDER_FULLY_REFUNDED")
                   for res in results if isinstance(res, PondError))
        assert len(done) == min(calls, left // fen)
        event(f"concurrent refunds: {share(len(done), calls)} succeeded")
        stored = self.run(self.store.get_order(order_id))
        assert stored.refunded_fen == o.refunded_fen + len(done) * fen <= o.amount_fen
        reversed_points = sum(res[0][2] for _, res in done)
        fresh = self.run(self.new_points_entries(who))
        assert all((e.kind, e.order_id) == (PointsEntryKind.REVERSE, order_id) for e in fresh)
        assert -sum(e.delta for e in fresh) == reversed_points
        self.calls += [Call(r, res[0]) for r, res in done]

    # -- stored value --
    @rule(who=st.integers(0, 1),
          amount=st.one_of(st.integers(1, 100_000), st.integers(30_000_000, MAX_BALANCE_FEN)),
          bonus=st.one_of(st.just(0), st.integers(1, 20_000)),
          to_cap=st.one_of(st.none(), st.integers(-1, 1)))
    def top_up(self, who: int, amount: int, bonus: int, to_cap: int | None = None) -> None:
        """`to_cap`: instead of `amount`, top up to the balance cap give or take a fen."""
        mid = self.members[who]
        before = self.run(self.store.get_member(mid))
        if to_cap is not None:
            amount = max(1, MAX_BALANCE_FEN - before.stored_value_fen - bonus + to_cap)
        request = pb.TopUpStoredValueRequest(member_id=mid, amount_fen=amount, bonus_fen=bonus,
                                             reference=self.next_id("pos-"),
                                             idempotency_key=self.next_id("k"))
        if before.stored_value_fen + amount + bonus > MAX_BALANCE_FEN:
            self.expect_rejection(request, "BALANCE_LIMIT")
            return
        result, _ = self.run(self.invoke(request))
        entry = self.run(self.store.get_stored_value_entry(result[0]))
        assert (entry.kind, entry.delta_fen, entry.bonus_fen) == (
            StoredValueEntryKind.TOP_UP, amount + bonus, bonus)
        after = self.run(self.store.get_member(mid))
        assert after.stored_value_fen == before.stored_value_fen + amount + bonus
        assert after.stored_value_opened and after.kind is MemberKind.STORED_VALUE
        self.sv_log[who].append(entry.id)
        self.calls.append(Call(request, result))

    @rule(target=payments, who=st.integers(0, 1),
          amount=st.one_of(st.integers(1, 50_000), st.integers(50_000, 200_000)))
    def pay(self, who: int, amount: int):
        mid = self.members[who]
        request = pb.PayWithStoredValueRequest(member_id=mid, amount_fen=amount,
                                               reference=self.next_id("bill-"),
                                               idempotency_key=self.next_id("k"))
        before = self.run(self.store.get_member(mid))
        if amount > before.stored_value_fen:
            self.expect_rejection(request, "INSUFFICIENT_BALANCE")
            return multiple()
        result, _ = self.run(self.invoke(request))
        entry = self.run(self.store.get_stored_value_entry(result[0]))
        assert (entry.kind, entry.delta_fen) == (StoredValueEntryKind.PAY, -amount)
        after = self.run(self.store.get_member(mid))
        assert after.stored_value_fen == before.stored_value_fen - amount
        self.sv_log[who].append(entry.id)
        self.payment_refunded[entry.id] = 0
        self.calls.append(Call(request, result))
        return Payment(who, entry.id, amount)

    @rule(payment=payments, own=st.booleans(), percent=st.integers(1, 110))
    def refund_payment(self, payment: Payment, own: bool, percent: int) -> None:
        """Refunds `percent` of a payment, by its own member or (not own) the other."""
        amount = max(1, payment.fen * percent // 100)
        who = payment.who if own else 1 - payment.who
        mid = self.members[who]
        request = pb.RefundStoredValuePaymentRequest(
            member_id=mid, payment_entry_id=payment.entry_id, amount_fen=amount,
            idempotency_key=self.next_id("k"))
        if not own:
            self.expect_rejection(request, "NOT_A_PAYMENT")
            return
        if amount > payment.fen - self.payment_refunded[payment.entry_id]:
            self.expect_rejection(request, "REFUND_EXCEEDS_PAYMENT")
            return
        before = self.run(self.store.get_member(mid))
        result, _ = self.run(self.invoke(request))
        entry = self.run(self.store.get_stored_value_entry(result[0]))
        assert (entry.kind, entry.delta_fen, entry.payment_entry_id) == (
            StoredValueEntryKind.REFUND, amount, payment.entry_id)
        assert self.run(self.store.get_member(mid)).stored_value_fen == (
            before.stored_value_fen + amount)
        self.payment_refunded[payment.entry_id] += amount
        self.sv_log[who].append(entry.id)
        self.calls.append(Call(request, result))

    # -- idempotency --
    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def replay_same_request(self, data: st.DataObject) -> None:
        """The same key and parameters: the first result again, and nothing changes."""
        call = data.draw(st.sampled_from(self.calls), label="call")
        before = self.run(self.snapshot())
        result, replayed = self.run(self.invoke(call.request))
        assert result == call.result
        assert replayed is call.replayed
        event(f"replayed {type(call.request).__name__}")
        assert self.run(self.snapshot()) == before

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def reuse_key_with_other_parameters(self, data: st.DataObject) -> None:
        """The same key with other parameters is refused, and nothing changes."""
        call = data.draw(st.sampled_from(self.calls), label="call")
        request = type(call.request)()
        request.CopyFrom(call.request)
        field = {
            pb.RedeemPointsRequest: "points", pb.AdjustPointsRequest: "delta",
            pb.TopUpStoredValueRequest: "amount_fen", pb.PayWithStoredValueRequest: "amount_fen",
            pb.RefundStoredValuePaymentRequest: "amount_fen",
            pb.RefundOrderRequest: "refund_fen", pb.RecordOrderRequest: "amount_fen",
        }[type(request)]
        value = getattr(request, field)
        step = data.draw(st.integers(1, 1_000), label="step")
        setattr(request, field, value + step if value >= 0 else value - step)
        self.expect_rejection(request, "IDEMPOTENCY_KEY_REUSED")
        # The first call still replays after the refusal.
        result, _ = self.run(self.invoke(call.request))
        assert result == call.result

    # -- invariants --
    @invariant()
    def ledgers_agree(self) -> None:
        async def check() -> None:
            await self._check_points()
            await self._check_stored_value()
            await self._check_orders()

        self.run(check())

    async def _check_points(self) -> None:
        for who, mid in enumerate(self.members):
            m = await self.store.get_member(mid)
            entries = await self.points_entries(mid, PAGE)
            lots = await self.store.open_lots(mid)
            by_id = {e.id: e for e in entries}
            assert len(by_id) == len(entries), "an entry was listed twice"
            assert set(by_id) == set(self.points_log[who])
            assert all(e.member_id == mid for e in entries)
            assert m.points_balance == sum(e.delta for e in entries)
            assert m.points_balance == sum(x.remaining for x in lots)
            assert m.points_balance >= 0
            running = 0
            for entry_id in self.points_log[who]:
                e = by_id[entry_id]
                running += e.delta
                assert e.balance_after == running >= 0, e
            # Every lot is its grant less what entries took from it.
            expected: dict[str, int] = {}
            expiry: dict[str, datetime] = {}
            for entry_id in self.points_log[who]:
                e = by_id[entry_id]
                if e.delta > 0:
                    assert e.kind in (PointsEntryKind.EARN, PointsEntryKind.ADJUST)
                    expected[e.id], expiry[e.id] = e.delta, e.expires_at
                    continue
                assert sum(n for _, n in e.taken) == -e.delta
                for lot_id, n in e.taken:
                    assert n > 0
                    expected[lot_id] -= n
                    assert expected[lot_id] >= 0, (lot_id, e)
                    if e.kind is PointsEntryKind.EXPIRE:
                        assert expiry[lot_id] <= e.at
                    else:
                        assert expiry[lot_id] > e.at, "spent an expired lot"
            open_by_id: dict[str, Lot] = {x.id: x for x in lots}
            assert open_by_id.keys() == {k for k, v in expected.items() if v > 0}
            for lot_id, lot in open_by_id.items():
                assert lot.remaining == expected[lot_id]
                assert 0 < lot.remaining <= lot.amount
                assert lot.expires_at == expiry[lot_id]

    async def _check_stored_value(self) -> None:
        for who, mid in enumerate(self.members):
            m = await self.store.get_member(mid)
            entries = await self.sv_entries(mid, PAGE)
            by_id = {e.id: e for e in entries}
            assert len(by_id) == len(entries)
            assert set(by_id) == set(self.sv_log[who])
            assert m.stored_value_fen == sum(e.delta_fen for e in entries) >= 0
            running = 0
            for entry_id in self.sv_log[who]:
                e = by_id[entry_id]
                running += e.delta_fen
                assert e.balance_after_fen == running, e
                assert running >= 0
                if e.kind is StoredValueEntryKind.TOP_UP:
                    assert 0 <= e.bonus_fen < e.delta_fen
                    # Top-ups respect the cap (refunds of payments may lift a balance
                    # above it: they restore value the member already held).
                    assert running <= MAX_BALANCE_FEN
                elif e.kind is StoredValueEntryKind.PAY:
                    assert e.delta_fen < 0
                    refunded = await self.store.refunded_fen_for_payment(e.id)
                    assert refunded == self.payment_refunded[e.id] <= -e.delta_fen
                else:
                    assert e.kind is StoredValueEntryKind.REFUND and e.delta_fen > 0
                    assert by_id[e.payment_entry_id].kind is StoredValueEntryKind.PAY

    async def _check_orders(self) -> None:
        for mid in self.members:
            m = await self.store.get_member(mid)
            orders = await self.store.list_orders(mid, "", 10_000)
            assert m.growth_value == sum(o.growth_earned - o.growth_reversed for o in orders)
            assert m.total_spent_fen == sum(o.amount_fen - o.refunded_fen for o in orders)
            assert m.paid_order_count == sum(1 for o in orders if o.refunded_fen < o.amount_fen)
            for o in orders:
                assert 0 <= o.refunded_fen <= o.amount_fen
                assert 0 <= o.points_reversed <= o.points_earned
                assert 0 <= o.growth_reversed <= o.growth_earned
                assert len({r.refund_id for r in o.refunds}) == len(o.refunds)


LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                           deadline=None)
TestLedgers = LedgerMachine.TestCase
