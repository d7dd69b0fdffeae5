"""Use cases of orders from every channel: recording one (growth, points at the tier
multiplier, kind, purchase statistics, tier upgrade) and refunding it (reversing
points and growth in proportion, once per refund id).

Both are idempotent calls (the order id, the refund id within its order): a replay
returns the first response. Past the records' retention the order itself still
knows: a recorded order replays from its stored fingerprint (as it is now), a
recorded refund id is refused (REFUND_ALREADY_RECORDED) rather than applied twice."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from services.member.domain import orders as do
from services.member.domain import points as dp
from services.member.domain.errors import RuleViolation
from services.member.domain.members import Member
from services.member.domain.orders import Order, OrderItem
from services.member.domain.points import PointsEntryKind
from services.member.events import EventWriter
from services.member.service import (
    DOMAIN,
    MAX_ATTEMPTS,
    MemberCore,
    R,
    member_merged,
    rule_error,
)
from services.member.store import MEMBERS, ORDERS, MemberWrite
from services.runtime.documents import Conflict, DuplicateKey
from services.runtime.errors import conflict, failed_precondition, not_found
from services.runtime.idempotency import IdempotentCall, key_reused
from services.runtime.ids import new_id


class _OwnerChanged(Exception):
    """The order was re-owned (a merge) after this call chose whose writes to hold."""


class PurchaseUseCases(MemberCore):
    if TYPE_CHECKING:  # MemberUseCases', beside this in MemberApp

        async def get(self, member_id: str) -> Member: ...

    async def order(self, order_id: str) -> Order:
        o = await self.store.get_order(order_id)
        if o is None:
            raise not_found("order", order_id, domain=DOMAIN)
        return o

    async def record_order(
        self,
        *,
        order_id: str,
        member_id: str,
        channel: int,
        store_id: str,
        guide_id: str,
        items: tuple[OrderItem, ...],
        amount_fen: int,
        paid_at: datetime | None,
        call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        """Renders (order, member, replayed) with call.render."""
        first_try = True

        async def attempt() -> tuple[MemberWrite | None, tuple[Order, Member, bool]]:
            # The first round reads neither the record nor the order (the hot path):
            # a used order id fails the order's insert, and the next round finds it.
            existing = None if first_try else await self.store.get_order(order_id)
            if existing is not None:
                # Recorded, but its idempotency record is gone (past the retention).
                if existing.fingerprint != call.fingerprint:
                    raise key_reused(order_id, domain=DOMAIN)
                return None, (existing, self.view(await self.member(existing.member_id)), True)
            m = await self.member(member_id)
            if m.merged_into:
                if first_try:
                    # Maybe a replay of an order recorded before the merge: the next
                    # round recalls it (or finds the order) before refusing.
                    raise Conflict(MEMBERS.name, member_id)
                raise member_merged(m)
            now = self.now()
            when = paid_at or now
            program = await self.tier_program()
            multiplier = program.tier(m.tier_level).points_multiplier_permille
            points = dp.points_for_order(amount_fen, self.rules.points_per_yuan, multiplier)
            growth = do.growth_for_order(amount_fen, self.rules.growth_per_yuan)
            order = Order(
                order_id,
                m.id,
                channel,
                store_id,
                guide_id,
                items,
                amount_fen,
                when,
                points,
                growth,
                call.fingerprint,
            )
            events = EventWriter(now, request_id)
            w = MemberWrite()
            w.add_order(order)
            moves: list[dp.PointsMove] = []
            if points:
                # Earned when the order was paid: a late-recorded order's points expire
                # counting from then, and at once if that is already past.
                moves.append(
                    self.grant_points(
                        m,
                        points,
                        now,
                        reason=f"order {order_id}",
                        order_id=order_id,
                        earned_at=when,
                    )
                )
                if stale := dp.expire_stale_grant(moves[0], entry_id=new_id("p"), now=now):
                    moves.append(stale)
                w.save_lots(moves[-1].lots)  # the lot as it ends up
                w.add_points_entries(move.entry for move in moves)
                m.points_balance = moves[-1].balance
            m.growth_value += growth
            m.paid_order_count += 1
            m.total_spent_fen += amount_fen
            m.first_paid_at = min(m.first_paid_at or when, when)
            m.last_paid_at = max(m.last_paid_at or when, when)
            in_window = when >= program.window_start(now)
            await self.apply_tier_upgrade(m, now, events, w, growth if in_window else 0)
            kind_before = m.kind
            self.touch(m, now)
            events.order_paid(order, m.paid_order_count)
            for move in moves:
                events.points(move.entry)
            if m.kind is not kind_before:
                events.updated(m, ["kind"])
            w.save_member(m)
            w.emit(*events.events)
            return w, (order, self.view(m), False)

        async def commit(w: MemberWrite) -> None:
            try:
                await self.commit(w)
            except DuplicateKey as exc:
                if exc.collection != ORDERS.name:
                    raise
                raise Conflict(exc.collection, exc.key) from exc  # recorded: replay it

        async def once() -> R:
            nonlocal first_try
            try:
                return await self.idempotency.run(call, attempt, commit, recall=not first_try)
            finally:
                first_try = False

        return await self.retrying(member_id, once)

    async def refund_order(
        self, order_id: str, refund_id: str, refund_fen: int, call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        """Renders (order, member, points reversed, growth reversed) with call.render."""

        holding = ""  # the member whose writes this call takes turns with

        async def attempt() -> tuple[MemberWrite, tuple[Order, Member, int, int]]:
            o = await self.order(order_id)
            if o.member_id != holding:
                raise _OwnerChanged  # re-owned by a merge meanwhile: hold the new owner
            m = await self.active_member(o.member_id)
            now = self.now()
            if o.refund(refund_id) is not None:
                # Applied, but its idempotency record is gone (past the retention).
                raise failed_precondition(
                    "REFUND_ALREADY_RECORDED",
                    f"refund {refund_id!r} of order {order_id!r} was recorded earlier",
                    domain=DOMAIN,
                    order_id=order_id,
                    refund_id=refund_id,
                )
            try:
                refund = do.plan_refund(o, refund_id, refund_fen, now)
            except RuleViolation as exc:
                raise rule_error(exc) from exc
            # The order is replaced guarded by its version, like the member: a refund
            # that lands meanwhile makes this one go round again.
            events = EventWriter(now, request_id)
            reversed_points, lots, entries = 0, [], []
            if refund.points > 0 and m.points_balance > 0:
                # If the member already spent them, take back what is left: the
                # balance never goes negative; the entry shows what was recovered.
                move = dp.spend(
                    entry_id=new_id("p"),
                    member_id=m.id,
                    lots=await self.store.open_lots(m.id),
                    points=refund.points,
                    now=now,
                    kind=PointsEntryKind.REVERSE,
                    order_id=order_id,
                    reason=f"refund {refund_id} of order {order_id}",
                    allow_partial=True,
                )
                if move.entry.delta:
                    lots, entries = list(move.lots), [move.entry]
                    m.points_balance = move.balance
                    reversed_points = -move.entry.delta
                    events.points(move.entry)
            fully = o.refunded_fen + refund.fen >= o.amount_fen
            o = replace(o, refunds=[*o.refunds, refund])
            m.growth_value = max(0, m.growth_value - refund.growth)
            m.total_spent_fen = max(0, m.total_spent_fen - refund.fen)
            if fully:
                m.paid_order_count = max(0, m.paid_order_count - 1)
            kind_before = m.kind
            self.touch(m, now)
            if m.kind is not kind_before:
                events.updated(m, ["kind"])
            events.order_refunded(o, refund, reversed_points)
            w = MemberWrite()
            w.save_order(o)
            w.save_lots(lots)
            w.add_points_entries(entries)
            w.save_member(m)
            w.emit(*events.events)
            return w, (o, self.view(m), reversed_points, refund.growth)

        # The order's member changes only by a merge (to the survivor, for good): its
        # writes are the ones to take turns with.
        for _ in range(MAX_ATTEMPTS):
            holding = (await self.order(order_id)).member_id
            try:
                return await self.idempotent(holding, call, attempt)
            except _OwnerChanged:
                continue
        raise conflict("CONCURRENT_UPDATE", "the order changed concurrently; retry", domain=DOMAIN)

    async def list_orders(self, member_id: str, before_id: str, limit: int) -> list[Order]:
        await self.member(member_id)
        return await self.store.list_orders(member_id, before_id, limit)
