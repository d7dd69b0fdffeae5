"""Group activity and health: per-group daily counters, the health of a group, groups
ranked by health, and a column's effect by weekday (the rules: domain/health.py).

Counters live in one document per group and brand day ("<group>:<YYYY-MM-DD>"):
  messages per member  RecordGroupActivity (WeCom's group statistics in production):
                       a member's count for the day is replaced, never added to, so
                       a day sent again changes nothing; messages and speakers are
                       kept as the sums.
  check_ins            CheckedIn events that name a group (a check-in without one is
                       the member's, not a group's).
  chain_joins          ChainJoined events (a chain belongs to a group).
  orders               the member service's OrderPaid: an order carries no group, so
                       it is attributed to the group the member most recently joined
                       within the 7 days before it was paid (and is still in), if any.
The events are consumed from the streams (in the service's consumer group
"community"), each applied once (the runtime's processed marks, under
"community-activity"), their counter written with the mark in one unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pond.events.v1 import member_events_pb2 as mev

from services.community.domain import health as dh
from services.community.domain.checkin import brand_day
from services.community.events import MEMBER_STREAM, STREAM, ChainJoined, CheckedIn
from services.community.membership import ACTIVE
from services.community.store import COLUMN_POSTS, GROUP_DAYS, GROUPS, MEMBERSHIPS
from services.community.writes import DOMAIN, Writes
from services.runtime.clock import Clock, epoch_micros, from_epoch_micros
from services.runtime.documents import Conflict, Doc, DocumentStore, DuplicateKey, UnitOfWork
from services.runtime.errors import failed_precondition
from services.runtime.events import EventHandlers, Received
from services.runtime.host import Consumer

ACTIVITY_CONSUMER = "community-activity"
ORDER_ATTRIBUTION = timedelta(days=7)
MAX_RANKED = 5000  # groups one ranking scores; a brand's 25,000 are ranked by filter
COUNTERS = ("messages", "speakers", "check_ins", "chain_joins", "orders")


def day_key(group_id: str, day: str) -> str:
    return f"{group_id}:{day}"


def _empty_day(group_id: str, day: str) -> Doc:
    return {"_id": day_key(group_id, day), "group_id": group_id, "day": day,
            "by_member": [], **{c: 0 for c in COUNTERS}}


class Activity:
    def __init__(self, writes: Writes) -> None:
        self.w = writes
        self.store = writes.store
        self.zone = ZoneInfo(writes.timezone)

    def today(self) -> date:
        return brand_day(self.w.now(), self.w.timezone)

    # -- writing --
    async def record(self, group_id: str, day: str, counts: dict[str, int]) -> Doc:
        await self.w.need(GROUPS.name, "group", group_id)

        if not counts:  # nothing sent: the day as it is (a read)
            found = await self.store.get(GROUP_DAYS.name, day_key(group_id, day))
            return found or _empty_day(group_id, day)

        async def attempt() -> Doc:
            doc = await self.store.get(GROUP_DAYS.name, day_key(group_id, day))
            fresh = doc is None
            doc = dict(doc or _empty_day(group_id, day))
            # [member, messages] pairs, not a mapping: member ids are not safe field
            # names in every engine (MongoDB and "." or "$").
            by_member = {**dict(doc["by_member"]), **counts}
            kept = sorted([m, n] for m, n in by_member.items() if n > 0)
            doc.update(by_member=kept, messages=sum(n for _m, n in kept), speakers=len(kept))
            uow = UnitOfWork()
            (uow.insert if fresh else uow.replace)(GROUP_DAYS.name, doc)
            await self.store.commit(uow)
            return doc

        return await self.w.run(("group-day", group_id, day), attempt)

    async def _count(self, event: Received[Any], group_id: str, day: str,
                     counter: str) -> None:
        """Adds one to the group's day counter with the event's mark. A day record
        made meanwhile (RecordGroupActivity, another consumer) is a lost race like a
        changed one: Conflict, so the runtime runs the handler again on fresh reads."""
        uow = event.uow
        doc = await self.store.get(GROUP_DAYS.name, day_key(group_id, day))
        if doc is None:
            uow.insert(GROUP_DAYS.name, {**_empty_day(group_id, day), counter: 1})
        else:
            uow.replace(GROUP_DAYS.name, {**doc, counter: doc[counter] + 1})
        try:
            await event.commit()
        except DuplicateKey as exc:
            if exc.collection != GROUP_DAYS.name:
                raise
            raise Conflict(GROUP_DAYS.name, exc.key) from exc

    async def on_checked_in(self, event: Received[CheckedIn], uow: UnitOfWork) -> None:
        if event.payload.group_id:
            await self._count(event, event.payload.group_id, event.payload.day, "check_ins")

    async def on_chain_joined(self, event: Received[ChainJoined], uow: UnitOfWork) -> None:
        day = brand_day(event.occurred_at, self.w.timezone).isoformat()
        await self._count(event, event.payload.group_id, day, "chain_joins")

    async def on_order_paid(self, event: Received[mev.OrderPaid], uow: UnitOfWork) -> None:
        paid = event.payload
        paid_at = paid.paid_at.ToDatetime(tzinfo=UTC) if paid.HasField(
            "paid_at") else event.occurred_at
        group_id = await self.attributed_group(paid.member_id, paid_at)
        if group_id:
            await self._count(event, group_id, brand_day(paid_at, self.w.timezone).isoformat(),
                              "orders")

    async def attributed_group(self, member_id: str, paid_at: datetime) -> str:
        """The group the member most recently joined in the 7 days before `paid_at`
        and is still in ("" when none)."""
        paid = epoch_micros(paid_at)
        since = epoch_micros(paid_at - ORDER_ATTRIBUTION)
        joined = [m for m in await self.store.find(
            MEMBERSHIPS.name, {"member_id": member_id, "state": ACTIVE}, limit=500)
            if since <= m["join_time"] <= paid]
        return max(joined, key=lambda m: (m["join_time"], m["group_id"]))["group_id"] if (
            joined) else ""

    def consumers(self, store: DocumentStore, clock: Clock) -> list[Consumer]:
        # A check-in without a group is not the activity's: passed over without a
        # processed mark (no read, no commit for most check-ins).
        own = EventHandlers(ACTIVITY_CONSUMER, store, clock).on(
            CheckedIn, self.on_checked_in, when=lambda checked: bool(checked.group_id)).on(
            ChainJoined, self.on_chain_joined)
        orders = EventHandlers(ACTIVITY_CONSUMER, store, clock).on(
            mev.OrderPaid, self.on_order_paid)
        # Read in the service's consumer group of each stream (the host merges them
        # with the service's other consumers there); the marks are the activity's own.
        return [Consumer(STREAM, own), Consumer(MEMBER_STREAM, orders)]

    # -- reading --
    async def days(self, group_id: str, first: date, last: date) -> list[dh.DayActivity]:
        docs = await self.store.find(GROUP_DAYS.name, {
            "group_id": group_id, "day": {"$gte": first.isoformat(), "$lte": last.isoformat()}},
            order=("day",), limit=(last - first).days + 1)
        return [dh.day_activity(d) for d in docs]

    async def health(self, group: Doc) -> dh.Diagnosis:
        today = self.today()
        created = brand_day(from_epoch_micros(group["create_time"]), self.w.timezone)
        month = today - timedelta(days=dh.VALUE_DAYS - 1)
        days = await self.days(group["_id"], max(month, created), today)
        if created < month:  # the first week too (what the later phases compare with)
            first_week = created + timedelta(days=dh.EARLY_DAYS - 1)
            days = await self.days(group["_id"], created,
                                   min(first_week, month - timedelta(days=1))) + days
        return dh.diagnose(days, group["member_count"], created, today)

    async def group_health(self, group_id: str) -> tuple[Doc, dh.Diagnosis]:
        group = await self.w.need(GROUPS.name, "group", group_id)
        return group, await self.health(group)

    async def ranked(self, where: dict[str, Any]) -> list[tuple[Doc, dh.Diagnosis]]:
        """Active groups matching `where`, worst first (7-day score, then 30-day, id)."""
        groups = await self.store.find(GROUPS.name, {**where, "state": "active"},
                                       limit=MAX_RANKED + 1)
        if len(groups) > MAX_RANKED:
            raise failed_precondition(
                "TOO_MANY_GROUPS", f"more than {MAX_RANKED} groups match: narrow the filter"
                " (store, city, kind)", domain=DOMAIN)
        scored = [(g, await self.health(g)) for g in groups]
        scored.sort(key=lambda gd: (gd[1].score_7d, gd[1].score_30d, gd[0]["_id"]))
        return scored

    async def column_effect(self, column_id: str, weeks: int,
                            ) -> tuple[dict[int, dh.WeekdayCompare], int]:
        """Per weekday, pooled over the groups the column posted to in the window."""
        await self.w.need("columns", "column", column_id)
        today = self.today()
        first = today - timedelta(weeks=weeks) + timedelta(days=1)
        start = epoch_micros(datetime.combine(first, datetime.min.time(), self.zone))
        posts = await self.store.find(COLUMN_POSTS.name, {
            "column_id": column_id, "occurrence": {"$gte": start}}, order=("occurrence",),
            limit=MAX_RANKED * 7)
        post_days: dict[str, set[date]] = {}
        for p in posts:
            post_days.setdefault(p["group_id"], set()).add(
                brand_day(from_epoch_micros(p["occurrence"]), self.w.timezone))
        pooled: list[tuple[Sequence[dh.DayActivity], set[date]]] = []
        for group_id, posted in sorted(post_days.items())[:MAX_RANKED]:
            days = dh.filled(await self.days(group_id, first, today), first, today)
            pooled.append((days, posted))
        return dh.pooled_weekday_effect(pooled), len(pooled)
