"""What tagging knows of each member: features fed by member events (the real-time
path, each event applied once, the member rescored at once) and the profile."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

from pond.events.v1 import community_events_pb2 as cev
from pond.events.v1 import member_events_pb2 as mev
from pyroaring import BitMap

from services.runtime.documents import UnitOfWork
from services.runtime.errors import PondError, not_found
from services.runtime.events import EventHandlers, Received
from services.tagging.catalogue import DOMAIN
from services.tagging.domain import scoring as sc
from services.tagging.domain.definitions import MANUAL, RULE, ManualTag
from services.tagging.domain.features import NEVER
from services.tagging.domain.history import MemberHistory
from services.tagging.service import TaggingCore

# Changes one member's history under the engine's lock (I/O allowed: categories).
HistoryChange = Callable[[MemberHistory], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProfileTag:
    name: str
    display_name: str
    kind: str
    source: str  # "manual by <who>", "rule v<version>" or "score"
    since: int  # epoch microseconds; 0: not known


@dataclass(frozen=True, slots=True)
class RepurchaseDue:
    category: str
    due_day: int  # days since 1970-01-01 in the brand's time zone
    due: bool


@dataclass(frozen=True, slots=True)
class MemberProfile:
    member_id: str
    tags: list[ProfileTag]
    scores: dict[str, str]  # rfm_class, lifecycle, value_quadrant
    features: dict[str, float]
    repurchase: list[RepurchaseDue]


class MemberUseCases(TaggingCore):
    # -- the real-time path: one handler per member event payload type, each event
    # applied once (the runtime commits its processed mark with the history) --
    def member_event_handlers(self, handlers: EventHandlers) -> EventHandlers:
        """Registers the member events that feed features on `handlers`."""
        return (
            handlers.on(mev.MemberRegistered, self.on_member_registered)
            .on(mev.OrderPaid, self.on_order_paid)
            .on(mev.OrderRefunded, self.on_order_refunded)
            .on(mev.TierChanged, self.on_tier_changed)
            .on(mev.PointsChanged, self.on_points_changed)
            .on(mev.MembersMerged, self.on_members_merged)
        )

    def community_event_handlers(self, handlers: EventHandlers) -> EventHandlers:
        """Registers the community events that are a member's interactions (a day of
        interactions_30d / _90d each): group joins and leaves, check-ins, chain joins."""
        for payload in (cev.MemberJoinedGroup, cev.MemberLeftGroup, cev.CheckedIn,
                        cev.ChainJoined):
            handlers.on(payload, self.on_interaction)
        return handlers

    async def on_interaction(self, event: Received[Any], uow: UnitOfWork) -> None:
        """The event's member (its subject) interacted on the day it happened."""
        async def change(history: MemberHistory) -> None:
            history.interacted(self.engine.day_of(event.occurred_at), self.engine.today())

        await self._change_history(event, uow, change)

    async def on_member_registered(
        self, event: Received[mev.MemberRegistered], uow: UnitOfWork
    ) -> None:
        async def change(history: MemberHistory) -> None:
            history.registered_day = self.engine.day_of(event.occurred_at)

        await self._change_history(event, uow, change)

    async def on_order_paid(self, event: Received[mev.OrderPaid], uow: UnitOfWork) -> None:
        async def change(history: MemberHistory) -> None:
            order = event.payload
            known = await self._categories(sorted({i.category for i in order.items if i.category}))
            history.order_paid(
                self.engine.day_of(order.paid_at.ToDatetime(tzinfo=UTC)),
                order.amount_fen,
                set(known.values()),  # untracked categories count in totals only
                self.engine.today(),
            )

        await self._change_history(event, uow, change)

    async def on_order_refunded(self, event: Received[mev.OrderRefunded], uow: UnitOfWork) -> None:
        async def change(history: MemberHistory) -> None:
            refund, today = event.payload, self.engine.today()
            paid_day = (
                self.engine.day_of(refund.paid_at.ToDatetime(tzinfo=UTC))
                if refund.HasField("paid_at")
                else today
            )
            history.order_refunded(paid_day, refund.refund_fen, refund.fully_refunded, today)

        await self._change_history(event, uow, change)

    async def on_tier_changed(self, event: Received[mev.TierChanged], uow: UnitOfWork) -> None:
        async def change(history: MemberHistory) -> None:
            history.tier = event.payload.to_level

        await self._change_history(event, uow, change)

    async def on_points_changed(self, event: Received[mev.PointsChanged], uow: UnitOfWork) -> None:
        async def change(history: MemberHistory) -> None:
            history.points_balance = event.payload.balance

        await self._change_history(event, uow, change)

    async def on_members_merged(self, event: Received[mev.MembersMerged], uow: UnitOfWork) -> None:
        """Two records of one person became one (the member service moved everything):
        the merged member's history adds up into the survivor's, its manual tags
        follow (who set them and when kept), it leaves every tag and segment, and its
        late events go to the survivor. Rules over manual tags are rescored after."""
        engine = self.engine
        merged_id = event.payload.merged_id
        async with engine.lock:
            surviving_id = engine.survivor_of(event.payload.surviving_id)
            if not merged_id or merged_id in engine.merged or merged_id == surviving_id:
                return  # nothing (more) to move: only the mark is committed
            indexes = await engine.ensure_members([surviving_id, merged_id])
            s_idx, m_idx = indexes[surviving_id], indexes[merged_id]
            history = await self.store.get_history(s_idx) or MemberHistory(s_idx)
            if (gone := await self.store.get_history(m_idx)) is not None:
                history.absorb(gone, engine.today())
            if history.registered_day == NEVER:
                history.registered_day = engine.today()
            changes = engine.leaving(m_idx)
            rescored = await engine.rescore_member(history)
            for mine, theirs in ((changes.tags, rescored.tags),
                                 (changes.segments, rescored.segments)):
                for name, (gained, lost) in theirs.items():
                    both = mine.setdefault(name, (BitMap(), BitMap()))
                    both[0].update(gained)
                    both[1].update(lost)
            moved = [
                ManualTag(s_idx, tag, by, at)
                for (idx, tag), (by, at) in sorted(engine.manual_meta.items())
                if idx == m_idx and (s_idx, tag) not in engine.manual_meta
            ]
            for t in moved:
                changes.tags.setdefault(t.tag, (BitMap(), BitMap()))[0].add(s_idx)
            dropped = [(idx, tag) for idx, tag in engine.manual_meta if idx == m_idx]
            self.store.add_history(uow, history)
            self.store.move_manual_tags(uow, moved, dropped)
            self.store.add_merge(uow, merged_id, surviving_id, m_idx)
            events = self._events(changes)
            uow.emit(*events)
            if not await event.commit():
                return  # applied before: nothing written
            engine.apply_changes(changes)
            for pair in dropped:
                engine.manual_meta.pop(pair, None)
            for t in moved:
                engine.manual_meta[(t.idx, t.tag)] = (t.by, t.at)
            engine.merged[merged_id] = surviving_id
            engine.universe.discard(m_idx)
            if events:
                self._on_commit()
        if moved:
            await self._rescore_indexes([s_idx])

    async def _change_history(
        self, event: Received[Any], uow: UnitOfWork, change: HistoryChange
    ) -> None:
        """Applies `change` to the event's member (the one it was merged into, for an
        event of a merged member delivered late), rescores it and commits the history
        and its TagsChanged events with the event's mark, all under the engine's lock;
        the engine takes the changes only once that commit succeeded."""
        if not event.subject_id:
            return  # about no member: only the mark is committed
        engine = self.engine
        async with engine.lock:
            subject = engine.survivor_of(event.subject_id)
            arriving = subject not in engine.index
            idx = (await engine.ensure_members([subject]))[subject]
            if arriving:  # known to the profile only once its first event is applied
                engine.arriving.add(idx)
            try:
                history = await self.store.get_history(idx) or MemberHistory(idx)
                await change(history)
                if history.registered_day == NEVER:  # known from an event before it
                    history.registered_day = engine.today()
                changes = await engine.rescore_member(history)
                events = self._events(changes)
                self.store.add_history(uow, history)
                uow.emit(*events)
                if await event.commit():  # False: applied before, nothing written
                    engine.apply_changes(changes)
                    if events:
                        self._on_commit()
            finally:
                engine.arriving.discard(idx)

    async def _rescore_indexes(self, indexes: list[int]) -> None:
        """Re-evaluates members whose manual tags changed (rules may use them)."""
        engine = self.engine
        for idx in sorted(set(indexes)):
            async with engine.lock:
                history = await self.store.get_history(idx) or MemberHistory(idx)
                changes = await engine.rescore_member(history)
                events = self._events(changes)
                if changes.tags or changes.segments:
                    engine.apply_changes(changes)
                    await self.store.put_bitmaps("tag", {}, events)
                    self._on_commit()

    # -- profile --
    async def profile(self, member_id: str) -> MemberProfile:
        engine = self.engine
        if member_id in engine.merged:
            raise member_merged(member_id, engine.survivor_of(member_id))
        idx = engine.index.get(member_id)
        if idx is None or idx in engine.arriving:
            raise member_not_known_yet(member_id)
        history = await self.store.get_history(idx) or MemberHistory(idx)
        frame = engine.frame_for([history])
        tags = []
        for name, bm in sorted(engine.tag_bitmaps.items()):
            if idx not in bm or name not in engine.tags:
                continue
            d = engine.tags[name]
            by, _at = engine.manual_meta.get((idx, name), ("", 0))
            source = {MANUAL: f"manual by {by}", RULE: f"rule v{d.version}"}.get(d.kind, "score")
            tags.append(
                ProfileTag(name, d.display_name, d.kind, source, engine.tag_since_micros(idx, name))
            )
        scores = {}
        for prefix, key in (
            (sc.RFM_PREFIX, "rfm_class"),
            (sc.LIFECYCLE_PREFIX, "lifecycle"),
            (sc.QUADRANT_PREFIX, "value_quadrant"),
        ):
            held = [t.name[len(prefix) :] for t in tags if t.name.startswith(prefix)]
            scores[key] = held[0] if held else ""
        cycles = engine.cycles_by_id()
        names = {v: k for k, v in engine.categories.items()}
        repurchase = []
        for cat_id, (_first, last, _count) in sorted(history.categories.items()):
            if cat_id in cycles:
                due_day = last + max(1, int(cycles[cat_id] + 0.5))
                repurchase.append(
                    RepurchaseDue(names.get(cat_id, str(cat_id)), due_day, frame.today >= due_day)
                )
        return MemberProfile(
            member_id,
            tags,
            scores,
            {k: float(v[0]) for k, v in frame.columns.items()},
            repurchase,
        )


def member_not_known_yet(member_id: str) -> PondError:
    """Tagging knows a member once the member service's events about it arrive: a
    member registered a moment ago may not be known yet (a caller shows "profile on
    its way" and asks again); an id that stays unknown is not a member."""
    return replace(
        not_found("member", member_id, domain=DOMAIN),
        reason="MEMBER_NOT_KNOWN_YET",
        message=f"tagging has not seen member {member_id!r} yet: it learns members from the"
        " member service's events (MemberRegistered, orders), usually within a second of"
        " registration; ask again shortly. An id that stays unknown is not a member.",
    )


def member_merged(member_id: str, survivor_id: str) -> PondError:
    """A member merged into another has no profile of its own any more: its tags,
    features and history are the survivor's."""
    return replace(
        not_found("member", member_id, domain=DOMAIN),
        reason="MEMBER_MERGED",
        message=f"member {member_id!r} was merged into member {survivor_id!r}: ask for that one",
        metadata={"member_id": member_id, "merged_into": survivor_id},
    )
