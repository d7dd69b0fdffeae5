"""The tagging service's use cases over the engine: catalogue, manual tags, the
real-time event path, profiles and segments. No gRPC here (api.py translates)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import numpy as np
import structlog
from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as mev
from pyroaring import BitMap

from services.runtime.clock import epoch_micros
from services.runtime.errors import (
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from services.runtime.eventbus import make_event
from services.tagging import catalogue as cat
from services.tagging.catalogue import DOMAIN
from services.tagging.domain import evaluation
from services.tagging.domain import expressions as ex
from services.tagging.domain import scoring as sc
from services.tagging.domain.features import NEVER
from services.tagging.domain.history import MemberHistory
from services.tagging.domain.segment_eval import evaluate_bitmap
from services.tagging.engine import Definition, TagChangeSet, TagEngine
from services.tagging.events import PRODUCER, tags_changed_payloads
from services.tagging.runs import record_segment_version
from services.tagging.store import AlreadyExists, ManualTag

log = structlog.get_logger("pond.tagging")
MAX_BATCH_MEMBERS = 1000
MAX_REPORTED_UNKNOWN = 20  # unknown member ids named in one error
MAX_BATCH_TAGS = 20
# The member events that feed features: payload name -> message class.
MEMBER_EVENT_TYPES = {
    "MemberRegistered": mev.MemberRegistered,
    "OrderPaid": mev.OrderPaid,
    "OrderRefunded": mev.OrderRefunded,
    "TierChanged": mev.TierChanged,
    "PointsChanged": mev.PointsChanged,
}


class _Bitmaps:
    """BitmapContext over the engine's current bitmaps (tag-only expressions)."""

    def __init__(self, engine: TagEngine) -> None:
        self.engine = engine
        self.universe = engine.universe

    def tag_bitmap(self, name: str) -> BitMap:
        return self.engine.tag_bitmaps.get(name, BitMap())

    def segment_bitmap(self, segment_id: str) -> BitMap:
        return self.engine.segment_bitmaps.get(segment_id, BitMap())

    def mask_to_bitmap(self, expr: ex.Expr) -> BitMap:
        raise AssertionError("only bitmap expressions are evaluated here")


class TaggingApp:
    def __init__(
        self, engine: TagEngine, on_commit=lambda: None, on_rules_changed=lambda: None
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self._on_commit = on_commit  # events are queued: wake the outbox relay
        self._on_rules_changed = on_rules_changed  # rescore everyone soon

    def now(self) -> datetime:
        return self.engine.clock.now()

    # -- catalogue --
    def tag(self, name: str) -> Definition:
        d = self.engine.tags.get(name)
        if d is None:
            raise not_found("tag", name, domain=DOMAIN)
        return d

    def tag_count(self, name: str) -> int:
        return len(self.engine.tag_bitmaps.get(name, ()))

    async def create_tag(
        self, name: str, kind: str, group: str, display_name: str, description: str, expression: str
    ) -> Definition:
        problems = cat.check_key("tag.name", name)
        if kind not in ("manual", "rule"):
            problems.append(("tag.kind", "create MANUAL or RULE tags; SCORE tags are built in"))
        if kind == "manual" and expression:
            problems.append(("tag.expression", "manual tags have no expression"))
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        expr = None
        if kind == "rule":
            expr = cat.check_expression("tag.expression", expression)
            cat.check_references(
                "tag.expression",
                expr,
                tags=self.engine.tags,
                segments=self.engine.segments,
                self_key=name,
                self_kind="tag",
            )
        now = epoch_micros(self.now())
        doc = {
            "name": name,
            "kind": kind,
            "group": group,
            "display_name": display_name or name,
            "description": description,
            "expression": expression if expr else "",
            "version": 1,
            "create_time": now,
            "update_time": now,
        }
        async with self.engine.lock:
            try:
                await self.store.put_definition("tag", name, doc, create=True)
            except AlreadyExists as exc:
                raise already_exists("TAG_EXISTS", f"tag {name!r} exists", domain=DOMAIN) from exc
            if expr is not None:
                await self.store.add_version("tag", name, 1, _version_doc(doc))
            self.engine.tags[name] = Definition(doc, expr)
        if expr is not None:
            self._on_rules_changed()
        return self.engine.tags[name]

    async def update_tag(self, name: str, values: dict) -> Definition:
        d = self.tag(name)
        if "expression" in values:
            if d.doc["kind"] != "rule":
                raise invalid_argument(
                    [("tag.expression", "only rule tags have expressions")], domain=DOMAIN
                )
            expr = cat.check_expression("tag.expression", values["expression"])
            cat.check_references(
                "tag.expression",
                expr,
                tags=self.engine.tags,
                segments=self.engine.segments,
                self_key=name,
                self_kind="tag",
            )
        async with self.engine.lock:
            doc = dict(d.doc, **values, update_time=epoch_micros(self.now()))
            new_rule = "expression" in values and values["expression"] != d.doc["expression"]
            if new_rule:
                doc["version"] = d.doc["version"] + 1
                await self.store.add_version("tag", name, doc["version"], _version_doc(doc))
            await self.store.put_definition("tag", name, doc)
            self.engine.tags[name] = cat.parse_definition(doc)
        if new_rule:
            self._on_rules_changed()
        return self.engine.tags[name]

    async def tag_versions(self, name: str) -> list[dict]:
        self.tag(name)
        return [doc for doc, _ in await self.store.list_versions("tag", name)]

    # -- manual tags --
    async def change_manual(
        self, member_ids: list[str], tag_names: list[str], by: str, assign: bool
    ) -> int:
        problems = []
        if not 1 <= len(member_ids) <= MAX_BATCH_MEMBERS:
            problems.append(("member_ids", f"1 to {MAX_BATCH_MEMBERS} members per call"))
        if not 1 <= len(tag_names) <= MAX_BATCH_TAGS:
            problems.append(("tag_names", f"1 to {MAX_BATCH_TAGS} tags per call"))
        for i, name in enumerate(tag_names):
            d = self.engine.tags.get(name)
            if d is None:
                problems.append((f"tag_names[{i}]", f"unknown tag {name!r}"))
            elif d.doc["kind"] != "manual":
                problems.append((f"tag_names[{i}]", f"{name!r} is computed, not a manual tag"))
        # A member id tagging has never seen is a typo or not a member: tagging it would
        # make a member out of nothing. (A member registered a moment ago is known as
        # soon as its MemberRegistered event arrives, within milliseconds.)
        unknown = [(i, m) for i, m in enumerate(member_ids) if m not in self.engine.index]
        for i, m in unknown[:MAX_REPORTED_UNKNOWN]:
            problems.append((f"member_ids[{i}]", f"unknown member {m!r}"))
        if len(unknown) > MAX_REPORTED_UNKNOWN:
            problems.append(("member_ids", f"{len(unknown)} unknown members in all"))
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        engine = self.engine
        async with engine.lock:
            index = engine.index
            at = epoch_micros(self.now())
            pairs = [(index[m], t) for m in dict.fromkeys(member_ids) for t in tag_names]
            todo = [p for p in pairs if (p in engine.manual_meta) != assign]
            changes = TagChangeSet()
            for idx, tag in todo:
                gained, lost = changes.tags.setdefault(tag, (BitMap(), BitMap()))
                (gained if assign else lost).add(idx)
            # Journeys react to a guide's tag as to a computed one: TagsChanged, queued
            # in the same transaction as the change.
            events = self._events(changes)
            if assign:
                adds = [ManualTag(i, t, by, at) for i, t in todo]
                changed = await self.store.set_manual_tags(adds, [], events)
            else:
                changed = await self.store.set_manual_tags([], todo, events)
            for pair in todo:
                if assign:
                    engine.manual_meta[pair] = (by, at)
                else:
                    engine.manual_meta.pop(pair, None)
            engine.apply_changes(changes)
            if events:
                self._on_commit()
        await self._rescore_indexes([i for i, _ in todo])
        return changed

    # -- the real-time path --
    async def handle_member_event(self, event: event_pb2.Event) -> None:
        """Applies one member-service event, once, and re-evaluates the member."""
        engine = self.engine
        kind = event.type.rsplit(".", 1)[-1]
        if kind not in MEMBER_EVENT_TYPES or not event.subject_id:
            await self.store.apply_event(event.id, None, [])
            return
        payload = MEMBER_EVENT_TYPES[kind]()
        event.payload.Unpack(payload)
        async with engine.lock:
            idx = (await engine.ensure_members([event.subject_id]))[event.subject_id]
            row = await self.store.get_history(idx)
            history = MemberHistory.from_row(row) if row else MemberHistory(idx)
            today = engine.today()
            if kind == "MemberRegistered":
                history.registered_day = engine.day_of(event.occurred_at.ToDatetime(tzinfo=UTC))
            elif kind == "OrderPaid":
                names = sorted({i.category for i in payload.items if i.category})
                known = await self._categories(names)
                history.order_paid(
                    engine.day_of(payload.paid_at.ToDatetime(tzinfo=UTC)),
                    payload.amount_fen,
                    {known[n] for n in names},
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
            if await self.store.apply_event(event.id, history.to_row(), events):
                engine.apply_changes(changes)
                if events:
                    self._on_commit()

    async def _categories(self, names: list[str]) -> dict[str, int]:
        engine = self.engine
        if all(n in engine.categories for n in names):
            return {n: engine.categories[n] for n in names}
        ids = await self.store.category_ids(names)
        engine.categories.update(ids)
        await cat.ensure_score_tags(self.store, engine.categories, self.now())
        for d in await self.store.list_definitions("tag"):
            engine.tags.setdefault(d["name"], cat.parse_definition(d))
        return ids

    def _events(self, changes: TagChangeSet) -> list[bytes]:
        now = self.now()
        return [
            make_event(PRODUCER, "tags", p, now).SerializeToString()
            for p in tags_changed_payloads(changes, self.engine.ids)
        ]

    async def _rescore_indexes(self, indexes: list[int]) -> None:
        """Re-evaluates members whose manual tags changed (rules may use them)."""
        engine = self.engine
        for idx in sorted(set(indexes)):
            async with engine.lock:
                row = await self.store.get_history(idx)
                history = MemberHistory.from_row(row) if row else MemberHistory(idx)
                changes = await engine.rescore_member(history)
                events = self._events(changes)
                if changes.tags or changes.segments:
                    engine.apply_changes(changes)
                    await self.store.put_bitmaps("tag", {}, events)
                    self._on_commit()

    # -- profile --
    async def profile(self, member_id: str) -> dict:
        engine = self.engine
        idx = engine.index.get(member_id)
        if idx is None:
            raise not_found("member", member_id, domain=DOMAIN)
        row = await self.store.get_history(idx)
        history = MemberHistory.from_row(row) if row else MemberHistory(idx)
        frame = engine.frame_for([history.to_row()])
        tags = []
        for name, bm in sorted(engine.tag_bitmaps.items()):
            if idx not in bm or name not in engine.tags:
                continue
            d = engine.tags[name].doc
            by, at = engine.manual_meta.get((idx, name), ("", 0))
            source = {"manual": f"manual by {by}", "rule": f"rule v{d['version']}"}.get(
                d["kind"], "score"
            )
            tags.append(
                {
                    "name": name,
                    "display_name": d["display_name"],
                    "kind": d["kind"],
                    "source": source,
                    "since": at,
                }
            )
        scores = {}
        for prefix, key in (
            (sc.RFM_PREFIX, "rfm_class"),
            (sc.LIFECYCLE_PREFIX, "lifecycle"),
            (sc.QUADRANT_PREFIX, "value_quadrant"),
        ):
            held = [t["name"][len(prefix) :] for t in tags if t["name"].startswith(prefix)]
            scores[key] = held[0] if held else ""
        cycles = engine.cycles_by_id()
        names = {v: k for k, v in engine.categories.items()}
        repurchase = []
        for cat_id, (_first, last, _count) in sorted(history.categories.items()):
            if cat_id in cycles:
                due_day = last + max(1, int(cycles[cat_id] + 0.5))
                repurchase.append(
                    {
                        "category": names.get(cat_id, str(cat_id)),
                        "due_day": due_day,
                        "due": frame.today >= due_day,
                    }
                )
        return {
            "member_id": member_id,
            "tags": tags,
            "scores": scores,
            "features": {k: float(v[0]) for k, v in frame.columns.items()},
            "repurchase": repurchase,
        }

    # -- segments --
    async def evaluate_everyone(self, expr: ex.Expr) -> BitMap:
        """An expression over the whole population, as it stands now."""
        engine = self.engine
        if ex.uses_only_bitmaps(expr):
            return evaluate_bitmap(expr, _Bitmaps(engine))
        rows: list[tuple] = []
        async for batch in self.store.scan_histories():
            rows.extend(batch)
        frame = engine.frame_for(rows)
        names = list(engine.tags)
        masks = engine.masks_from_bitmaps(frame.idx, names)
        seg_masks = {
            s: np.isin(frame.idx, np.asarray(bm.to_array(), dtype=np.uint32))
            for s, bm in engine.segment_bitmaps.items()
        }
        mask = evaluation.evaluate(
            expr, evaluation.FrameContext(frame, masks, seg_masks, engine.categories)
        )
        return sc.bitmap_of(frame.idx, mask)

    def segment(self, seg_id: str) -> Definition:
        d = self.engine.segments.get(seg_id)
        if d is None:
            raise not_found("segment", seg_id, domain=DOMAIN)
        return d

    async def preview(self, expression: str, sample: int) -> tuple[int, list[str]]:
        expr = cat.check_expression("expression", expression)
        cat.check_references(
            "expression",
            expr,
            tags=self.engine.tags,
            segments=self.engine.segments,
            self_key="~preview",
            self_kind="segment",
        )
        members = await self.evaluate_everyone(expr)
        return len(members), self.engine.member_ids_of(BitMap(members.to_array()[:sample]))

    async def save_segment(self, seg_id: str, values: dict, *, create: bool) -> Definition:
        engine = self.engine
        problems = cat.check_key("segment.id", seg_id) if create else []
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        if not create:
            self.segment(seg_id)
        expr = None
        if create or "expression" in values:
            expr = cat.check_expression("segment.expression", values.get("expression", ""))
            cat.check_references(
                "segment.expression",
                expr,
                tags=engine.tags,
                segments=engine.segments,
                self_key=seg_id,
                self_kind="segment",
            )
        now = self.now()
        async with engine.lock:
            if create:
                if seg_id in engine.segments:
                    raise already_exists(
                        "SEGMENT_EXISTS", f"segment {seg_id!r} exists", domain=DOMAIN
                    )
                doc = {
                    "id": seg_id,
                    "display_name": values.get("display_name") or seg_id,
                    "description": values.get("description", ""),
                    "version": 0,
                    "count": 0,
                    "create_time": epoch_micros(now),
                    "update_time": epoch_micros(now),
                    "expression": values["expression"],
                }
            else:
                doc = dict(engine.segments[seg_id].doc, **values, update_time=epoch_micros(now))
            engine.segments[seg_id] = Definition(doc, expr or engine.segments[seg_id].expr)
            await self.store.put_definition("segment", seg_id, doc)
        if expr is not None:
            await self._materialise(seg_id, "create" if create else "update")
        return engine.segments[seg_id]

    async def _materialise(self, seg_id: str, reason: str) -> None:
        engine = self.engine
        members = await self.evaluate_everyone(engine.segments[seg_id].expr)
        async with engine.lock:
            before = engine.segment_bitmaps.get(seg_id, BitMap())
            engine.segment_bitmaps[seg_id] = members
            await self.store.put_bitmaps("segment", {seg_id: members.serialize()})
            await record_segment_version(
                engine, seg_id, members - before, before - members, reason, self.now()
            )

    def check(self, member_id: str, seg_ids: Sequence[str]) -> dict[str, bool]:
        engine = self.engine
        segments, bitmaps = engine.segments, engine.segment_bitmaps
        idx = engine.index.get(member_id, -1)
        result = {}
        for seg_id in seg_ids:  # one pass: this answers CheckMembership, a hot RPC
            if seg_id not in segments:
                missing = [s for s in seg_ids if s not in segments]
                raise not_found("segment", ", ".join(missing), domain=DOMAIN)
            result[seg_id] = idx >= 0 and idx in bitmaps.get(seg_id, ())
        return result

    async def stream_members(
        self, seg_id: str, cursor: str, chunk: int
    ) -> AsyncIterator[tuple[list[str], str, int]]:
        d = self.segment(seg_id)
        version = int(d.doc.get("version", 0))
        after = -1
        if cursor:
            try:
                cursor_version, after = (int(x) for x in cursor.split(":"))
            except ValueError as exc:
                raise invalid_argument(
                    [("cursor", "is not a cursor this service issued")], domain=DOMAIN
                ) from exc
            if cursor_version != version:
                raise failed_precondition(
                    "SEGMENT_CHANGED",
                    "the segment has a new version; restart the stream",
                    domain=DOMAIN,
                    version=str(version),
                )
        members = self.engine.segment_bitmaps.get(seg_id, BitMap()).copy()
        while True:
            part = []
            for idx in members.iter_equal_or_larger(after + 1):
                part.append(idx)
                if len(part) == chunk:
                    break
            if not part:
                return
            after = part[-1]
            yield self.engine.member_ids_of(part), f"{version}:{after}", version

    async def segment_versions(self, seg_id: str) -> list[dict]:
        self.segment(seg_id)
        return [doc for doc, _ in await self.store.list_versions("segment", seg_id)]

    # -- categories --
    async def set_cycle(self, category: str, days: float) -> None:
        if not category or len(category) > 64:
            raise invalid_argument([("category", "1-64 characters")], domain=DOMAIN)
        if not 0 <= days <= 3650:
            raise invalid_argument([("days", "0 (clear) to 3650")], domain=DOMAIN)
        await self._categories([category])
        await self.store.set_cycle(category, days)
        self.engine.configured_cycles = await self.store.load_cycles()
        self._on_rules_changed()  # repurchase-due tags of the category move


def _version_doc(doc: dict) -> dict:
    return {
        "version": doc["version"],
        "expression": doc["expression"],
        "create_time": doc["update_time"],
    }
