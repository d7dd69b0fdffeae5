"""What tagging knows of each member: features fed by member events (the real-time
path, each event applied once, the member rescored at once) and the profile."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as mev

from services.runtime.errors import PondError, not_found
from services.tagging.catalogue import DOMAIN
from services.tagging.domain import scoring as sc
from services.tagging.domain.definitions import MANUAL, RULE
from services.tagging.domain.features import NEVER
from services.tagging.domain.history import MemberHistory
from services.tagging.service import TaggingCore

# The member events that feed features: payload name -> message class.
MEMBER_EVENT_TYPES = {
    "MemberRegistered": mev.MemberRegistered,
    "OrderPaid": mev.OrderPaid,
    "OrderRefunded": mev.OrderRefunded,
    "TierChanged": mev.TierChanged,
    "PointsChanged": mev.PointsChanged,
}


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
    # -- the real-time path --
    async def handle_member_event(self, event: event_pb2.Event) -> None:
        """Applies one member-service event, once, and re-evaluates the member."""
        engine = self.engine
        if await self.store.event_applied(event.id):  # a redelivery: nothing to redo
            return
        kind = event.type.rsplit(".", 1)[-1]
        if kind not in MEMBER_EVENT_TYPES or not event.subject_id:
            await self.store.apply_event(event.id, None, [])
            return
        payload = MEMBER_EVENT_TYPES[kind]()
        event.payload.Unpack(payload)
        async with engine.lock:
            arriving = event.subject_id not in engine.index
            idx = (await engine.ensure_members([event.subject_id]))[event.subject_id]
            if arriving:  # known to the profile only once its first event is applied
                engine.arriving.add(idx)
            try:
                await self._apply(event, kind, payload, idx)
            finally:
                engine.arriving.discard(idx)

    async def _apply(self, event: event_pb2.Event, kind: str, payload: Any, idx: int) -> None:
        """One event's change to member `idx`'s history, scored and saved (under the
        engine's lock)."""
        engine = self.engine
        history = await self.store.get_history(idx) or MemberHistory(idx)
        today = engine.today()
        if kind == "MemberRegistered":
            history.registered_day = engine.day_of(event.occurred_at.ToDatetime(tzinfo=UTC))
        elif kind == "OrderPaid":
            names = sorted({i.category for i in payload.items if i.category})
            known = await self._categories(names)
            history.order_paid(
                engine.day_of(payload.paid_at.ToDatetime(tzinfo=UTC)),
                payload.amount_fen,
                set(known.values()),  # untracked categories count in totals only
                today,
            )
        elif kind == "OrderRefunded":
            paid_day = (
                engine.day_of(payload.paid_at.ToDatetime(tzinfo=UTC))
                if payload.HasField("paid_at")
                else today
            )
            history.order_refunded(paid_day, payload.refund_fen, payload.fully_refunded, today)
        elif kind == "TierChanged":
            history.tier = payload.to_level
        elif kind == "PointsChanged":
            history.points_balance = payload.balance
        if history.registered_day == NEVER and kind != "MemberRegistered":
            history.registered_day = today
        changes = await engine.rescore_member(history)
        events = self._events(changes)
        if await self.store.apply_event(event.id, history, events):
            engine.apply_changes(changes)
            if events:
                self._on_commit()

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
