"""Use cases of the two money-like ledgers: points (redeem, adjust, expire, remind)
and stored value (top up, pay, refund a payment)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

import structlog

from services.member.domain import points as dp
from services.member.domain import stored_value as dsv
from services.member.domain.errors import RuleViolation
from services.member.domain.members import Member, birthday_endings
from services.member.domain.points import Lot, PointsEntry, PointsEntryKind
from services.member.domain.stored_value import StoredValueEntry
from services.member.events import EventWriter
from services.member.service import DOMAIN, MemberCore, R, rule_error
from services.member.store import MemberWrite
from services.runtime.clock import epoch_micros
from services.runtime.documents import IDEMPOTENCY, DuplicateKey, IdempotencyRecord
from services.runtime.errors import not_found
from services.runtime.idempotency import IdempotentCall
from services.runtime.ids import new_id

log = structlog.get_logger("pond.member")
# A member's birthday gift of a year is marked given for longer than the year, so no
# rerun (and no retention setting) can give it twice.
BIRTHDAY_MARK_DAYS = 400


class LedgerUseCases(MemberCore):
    # -- points --
    async def _move_points(
        self, call: IdempotentCall[R], member_id: str, request_id: str, make
    ) -> R:
        return await self.idempotent(
            member_id, call, lambda: self._points_write(member_id, request_id, make)
        )

    def _applied(
        self, m: Member, move: dp.PointsMove, now: datetime, request_id: str = ""
    ) -> MemberWrite:
        """The write of `move` on member `m` (lots, entry, balance) with its event."""
        m.points_balance = move.balance
        self.touch(m, now)
        events = EventWriter(now, request_id)
        events.points(move.entry)
        w = MemberWrite()
        w.save_lots(move.lots)
        w.add_points_entries([move.entry])
        w.save_member(m)
        w.emit(*events.events)
        return w

    async def _points_write(
        self, member_id: str, request_id: str, make
    ) -> tuple[MemberWrite, PointsEntry]:
        m = await self.active_member(member_id)
        now = self.now()
        lots = await self.store.open_lots(member_id)
        try:
            move: dp.PointsMove = make(m, lots, now)
        except RuleViolation as exc:
            raise rule_error(exc) from exc
        return self._applied(m, move, now, request_id), move.entry

    async def redeem_points(
        self, member_id: str, points: int, reason: str, call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        """Renders the points entry (call.render)."""
        def make(m, lots: list[Lot], now: datetime) -> dp.PointsMove:
            return dp.spend(
                entry_id=new_id("p"),
                member_id=m.id,
                lots=lots,
                points=points,
                now=now,
                kind=PointsEntryKind.REDEEM,
                reason=reason,
            )

        return await self._move_points(call, member_id, request_id, make)

    async def adjust_points(
        self, member_id: str, delta: int, reason: str, call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        """Renders the points entry (call.render)."""
        def make(m, lots: list[Lot], now: datetime) -> dp.PointsMove:
            if delta > 0:
                return self.grant_points(m, delta, now, kind=PointsEntryKind.ADJUST, reason=reason)
            return dp.spend(
                entry_id=new_id("p"),
                member_id=m.id,
                lots=lots,
                points=-delta,
                now=now,
                kind=PointsEntryKind.ADJUST,
                reason=reason,
            )

        return await self._move_points(call, member_id, request_id, make)

    async def grant_birthday_gifts(self, batch: int = 500) -> tuple[int, int]:
        """Gives every member whose birthday is today (the brand's calendar) their
        tier's birthday gift points, once a year: a rerun, or a member found again
        later the same day, gives nothing more. Returns (members gifted, points)."""
        program = await self.tier_program()
        today = self.now().astimezone(ZoneInfo(self.rules.timezone)).date()
        endings = birthday_endings(today)
        gifted = granted = 0
        after = ""
        while page := await self.store.members_with_birthday(endings, after, batch):
            for m in page:
                if m.merged_into:
                    continue  # celebrated on the member it was merged into
                gift = program.tier(m.tier_level).birthday_gift_points
                if gift > 0 and await self._give_birthday_gift(m.id, gift, today.year):
                    gifted += 1
                    granted += gift
            after = page[-1].id
        return gifted, granted

    async def _give_birthday_gift(self, member_id: str, points: int, year: int) -> bool:
        scope, key = "GrantBirthdayGifts", f"{member_id}:{year}"

        def make(m, lots: list[Lot], now: datetime) -> dp.PointsMove:
            return self.grant_points(
                m, points, now, kind=PointsEntryKind.GIFT, reason=f"birthday gift {year}"
            )

        async def once() -> bool:
            if await self.store.docs.recall(scope, key) is not None:
                return False  # given earlier this year
            w, _entry = await self._points_write(member_id, "", make)
            until = self.now() + timedelta(days=BIRTHDAY_MARK_DAYS)
            w.remember(IdempotencyRecord(scope, key, "birthday-gift", b"", epoch_micros(until)))
            try:
                await self.commit(w)
            except DuplicateKey as exc:
                if exc.collection != IDEMPOTENCY:
                    raise
                return False  # given by another replica meanwhile
            return True

        return await self.retrying(member_id, once)

    async def list_points_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[PointsEntry]:
        await self.member(member_id)
        return await self.store.list_points_entries(member_id, before_id, limit)

    async def expiring_points(
        self, member_id: str, within_days: int, after_id: str, limit: int
    ) -> list[Lot]:
        if member_id:
            await self.member(member_id)
        now = self.now()
        return await self.store.expiring_lots(
            member_id, now, now + timedelta(days=within_days), after_id, limit
        )

    async def run_points_expiry(
        self, remind_within_days: int, batch: int = 500
    ) -> tuple[int, int, int]:
        """Expires every due lot (one EXPIRE entry per member) and announces lots
        expiring within `remind_within_days` once each. Safe to rerun at any time.
        Also the service's periodic housekeeping: forgets idempotency records past
        their retention."""
        members = points = 0
        while True:
            due = await self.store.members_with_due_lots(self.now(), batch)
            if not due:
                break
            expired_now = 0
            for member_id in due:
                expired_now += await self.retrying(
                    member_id, partial(self._expire_member, member_id)
                )
                members += 1
            points += expired_now
            if expired_now == 0:
                # The store says lots are due but none could be expired: never spin.
                log.error("points expiry made no progress", members=len(due))
                break
        announced = 0
        while True:
            now = self.now()
            lots = await self.store.unannounced_lots(
                now, now + timedelta(days=remind_within_days), batch
            )
            if not lots:
                break
            by_member: dict[str, set[str]] = {}
            for lot in lots:
                by_member.setdefault(lot.member_id, set()).add(lot.id)
            for member_id, lot_ids in by_member.items():
                announced += await self.retrying(
                    member_id, partial(self._announce, member_id, lot_ids)
                )
        return members, points, announced

    async def _announce(self, member_id: str, lot_ids: set[str]) -> int:
        # Through the member's version like every lot change, so a concurrent spend
        # is never overwritten by a stale copy of the lot.
        m = await self.member(member_id)
        lots = [
            lot
            for lot in await self.store.open_lots(member_id)
            if lot.id in lot_ids and not lot.announced
        ]
        events = EventWriter(self.now())
        for lot in lots:
            events.expiring(lot)
        w = MemberWrite()
        w.save_lots(replace(lot, announced=True) for lot in lots)
        w.save_member(m)
        w.emit(*events.events)
        await self.commit(w)
        return len(lots)

    async def _expire_member(self, member_id: str) -> int:
        m = await self.member(member_id)
        now = self.now()
        move = dp.expire(
            entry_id=new_id("p"),
            member_id=m.id,
            lots=await self.store.open_lots(member_id),
            now=now,
        )
        if move is None:
            return 0
        await self.commit(self._applied(m, move, now))
        return -move.entry.delta

    # -- stored value --
    async def _move_stored_value(
        self, call: IdempotentCall[R], member_id: str, request_id: str, make
    ) -> R:
        """Renders the stored-value entry (call.render)."""

        async def attempt() -> tuple[MemberWrite, StoredValueEntry]:
            m = await self.active_member(member_id)
            now = self.now()
            try:
                entry: StoredValueEntry = await make(m, now)
            except RuleViolation as exc:
                raise rule_error(exc) from exc
            m.stored_value_fen = entry.balance_after_fen
            m.stored_value_opened = True
            before = m.kind
            self.touch(m, now)
            events = EventWriter(now, request_id)
            if m.kind is not before:
                events.updated(m, ["kind"])
            w = MemberWrite()
            w.add_sv_entries([entry])
            w.save_member(m)
            w.emit(*events.events)
            return w, entry

        return await self.idempotent(member_id, call, attempt)

    async def top_up(
        self,
        member_id: str,
        amount_fen: int,
        bonus_fen: int,
        reference: str,
        call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        async def make(m, now: datetime) -> StoredValueEntry:
            return dsv.top_up(
                entry_id=new_id("s"),
                member_id=m.id,
                balance=m.stored_value_fen,
                amount_fen=amount_fen,
                bonus_fen=bonus_fen,
                now=now,
                reference=reference,
            )

        return await self._move_stored_value(call, member_id, request_id, make)

    async def pay(
        self, member_id: str, amount_fen: int, reference: str, call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        async def make(m, now: datetime) -> StoredValueEntry:
            return dsv.pay(
                entry_id=new_id("s"),
                member_id=m.id,
                balance=m.stored_value_fen,
                amount_fen=amount_fen,
                now=now,
                reference=reference,
            )

        return await self._move_stored_value(call, member_id, request_id, make)

    async def refund_payment(
        self,
        member_id: str,
        payment_entry_id: str,
        amount_fen: int,
        call: IdempotentCall[R],
        request_id: str = "",
    ) -> R:
        async def make(m, now: datetime) -> StoredValueEntry:
            payment = await self.store.get_stored_value_entry(payment_entry_id)
            if payment is None:
                raise not_found("stored value payment", payment_entry_id, domain=DOMAIN)
            refunded = await self.store.refunded_fen_for_payment(payment_entry_id)
            return dsv.refund_payment(
                entry_id=new_id("s"),
                member_id=m.id,
                balance=m.stored_value_fen,
                payment=payment,
                already_refunded_fen=refunded,
                amount_fen=amount_fen,
                now=now,
            )

        return await self._move_stored_value(call, member_id, request_id, make)

    async def list_stored_value_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[StoredValueEntry]:
        await self.member(member_id)
        return await self.store.list_stored_value_entries(member_id, before_id, limit)
