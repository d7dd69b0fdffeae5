"""The tagging engine: the in-memory working set (dense member index, tag and
segment bitmaps, definitions, categories) rebuilt from the store at start-up, and
the real-time path: a member event updates the member's history and re-evaluates
that member's rule tags, per-member scores and segments at once.

Bitmaps changed in real time are persisted by `flush()` (called every second by
the server); scoring runs write theirs directly. Since when each member has each
computed tag is kept with them (services.tagging.since)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import structlog
from pyroaring import BitMap

from services.runtime.clock import Clock, epoch_micros
from services.tagging.catalogue import ensure_score_tags
from services.tagging.domain import expressions as ex
from services.tagging.domain import scores
from services.tagging.domain import scoring as sc
from services.tagging.domain.definitions import (
    MANUAL,
    RULE,
    SegmentDefinition,
    SegmentVersion,
    TagDefinition,
    parsed,
)
from services.tagging.domain.features import FeatureFrame, History, compute_features
from services.tagging.domain.history import MemberHistory, assemble
from services.tagging.domain.packed import assemble_packed, concatenate
from services.tagging.domain.scoring import in_dependency_order
from services.tagging.since import KIND as SINCE_KIND
from services.tagging.since import TagSince
from services.tagging.store import TaggingStore

log = structlog.get_logger("pond.tagging")
EPOCH_DAY_SECONDS = 86_400
SAMPLE = 20  # members named per segment version, joined and left each


@dataclass
class TagChangeSet:
    """Changes of one unit of work: tag -> (gained, lost) member indexes."""

    tags: dict[str, tuple[BitMap, BitMap]] = field(default_factory=dict)
    segments: dict[str, tuple[BitMap, BitMap]] = field(default_factory=dict)

    def count(self) -> tuple[int, int]:
        return (
            sum(len(g) for g, _ in self.tags.values()),
            sum(len(lo) for _, lo in self.tags.values()),
        )


class TagEngine:
    def __init__(
        self,
        store: TaggingStore,
        clock: Clock,
        *,
        timezone: str = "Asia/Shanghai",
        thresholds: scores.LifecycleThresholds | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tz = ZoneInfo(timezone)
        self.thresholds = thresholds or scores.LifecycleThresholds()
        self.lock = asyncio.Lock()  # one mutation of the working set at a time
        self.index: dict[str, int] = {}
        # Members whose first event is being applied: indexed, not yet scored or saved.
        self.arriving: set[int] = set()
        self.ids: list[str] = []
        # Merged member id -> the member it was merged into (MembersMerged): such a
        # member is in no tag, segment or universe; its late events go to the survivor.
        self.merged: dict[str, str] = {}
        self.universe = BitMap()
        self.tags: dict[str, TagDefinition] = {}
        self.segments: dict[str, SegmentDefinition] = {}
        self.tag_bitmaps: dict[str, BitMap] = {}
        self.segment_bitmaps: dict[str, BitMap] = {}
        self.manual_meta: dict[tuple[int, str], tuple[str, int]] = {}
        self.categories: dict[str, int] = {}
        self.configured_cycles: dict[str, float] = {}
        self.learned_cycles: dict[int, float] = {}
        self.since = TagSince()  # computed tags; manual ones are in manual_meta
        # Categories seen past the limit (settings.tagging_max_categories), a sample.
        self.untracked_categories: list[str] = []
        self._dirty_tags: set[str] = set()
        self._dirty_segments: set[str] = set()
        # Run id -> members re-evaluated in real time while that scoring run is under
        # way: the run scored their older history and must leave them alone.
        self._touched: dict[str, BitMap] = {}

    # -- time --
    def day_of(self, when: datetime) -> int:
        local = when.astimezone(self.tz)
        return (local.replace(tzinfo=None) - datetime(1970, 1, 1)).days

    def today(self) -> int:
        return self.day_of(self.clock.now())

    def day_start_micros(self, day: int) -> int:
        """The start of `day` in the brand's time zone, as epoch microseconds."""
        local = datetime(1970, 1, 1) + timedelta(days=day)
        return epoch_micros(local.replace(tzinfo=self.tz))

    # -- loading --
    async def load(self) -> None:
        async with self.lock:
            pairs = await self.store.load_index()
            self.ids = [""] * (pairs[-1][0] + 1 if pairs else 0)
            for idx, member_id in pairs:
                self.ids[idx] = member_id
            self.index = {m: i for i, m in pairs}
            self.merged = await self.store.load_merges()
            self.universe = sc.bitmap_of(
                np.array([i for i, m in pairs if m not in self.merged], dtype=np.uint32)
            )
            self.categories = await self.store.load_categories()
            self.configured_cycles = await self.store.load_cycles()
            tags = await ensure_score_tags(self.store, self.categories, self.clock.now())
            self.tags = {t.name: t for t in tags}
            self.segments = {s.id: parsed(s) for s in await self.store.list_segments()}
            self.tag_bitmaps = {
                k: BitMap.deserialize(v) for k, v in (await self.store.load_bitmaps("tag")).items()
            }
            self.segment_bitmaps = {
                k: BitMap.deserialize(v)
                for k, v in (await self.store.load_bitmaps("segment")).items()
            }
            self.manual_meta = {}
            manual: dict[str, list[int]] = {}
            for t in await self.store.load_manual_tags():
                self.manual_meta[(t.idx, t.tag)] = (t.by, t.at)
                manual.setdefault(t.tag, []).append(t.idx)
            for tag, members in manual.items():
                self.tag_bitmaps[tag] = BitMap(members)
            self.learned_cycles = await self.store.learned_cycles()
            self.untracked_categories = await self.store.untracked_categories()
            self.since = TagSince.from_blobs(await self.store.load_bitmaps(SINCE_KIND))

    # -- helpers used by the use cases --
    def member_ids_of(self, indexes: Iterable[int]) -> list[str]:
        return [self.ids[i] for i in indexes]

    def cycles_by_id(self, learned: dict[int, float] | None = None) -> dict[int, float]:
        """Repurchase cycles by category id: learned ones (the last run's, unless
        given), overridden by the operator's configured ones."""
        cycles = dict(self.learned_cycles if learned is None else learned)
        for name, days in self.configured_cycles.items():
            if name in self.categories:
                cycles[self.categories[name]] = days
        return cycles

    def rule_defs(self) -> dict[str, ex.Expr]:
        return {k: d.expr for k, d in self.tags.items() if d.kind == RULE and d.expr is not None}

    def segment_defs(self) -> dict[str, ex.Expr]:
        return {k: d.expr for k, d in self.segments.items() if d.expr is not None}

    def masks_from_bitmaps(self, idx: np.ndarray, names) -> dict[str, np.ndarray]:
        """Current membership of `names` for the frame rows `idx`."""
        out = {}
        small = len(idx) <= 256  # the real-time path: probe the bitmap, copy nothing
        for name in names:
            bm = self.tag_bitmaps.get(name)
            if bm is None or not len(bm):
                out[name] = np.zeros(len(idx), dtype=bool)
            elif small:
                out[name] = np.array([int(i) in bm for i in idx], dtype=bool)
            else:
                out[name] = np.isin(idx, np.asarray(bm.to_array(), dtype=np.uint32))
        return out

    def manual_names(self) -> list[str]:
        return [k for k, d in self.tags.items() if d.kind == MANUAL]

    def population_names(self) -> list[str]:
        return [k for k in self.tags if k.startswith(sc.POPULATION_PREFIXES)]

    def frame_for(self, histories: Sequence[MemberHistory]) -> FeatureFrame:
        """Features of a few members (one, usually)."""
        return compute_features(assemble([h.to_row() for h in histories]), self.today())

    def frame_of(self, parts: list[History]) -> FeatureFrame:
        """Features of consecutive parts of the members."""
        return compute_features(concatenate(parts), self.today())

    async def load_frame(self, partition: int = 0, partitions: int = 1) -> FeatureFrame:
        """Features of every member with idx % partitions == partition, from the store
        (each batch read is assembled at once: see services.tagging.domain.packed)."""
        # A million history objects would set off cyclic-GC passes that find nothing
        # to free (none of this is cyclic): the collector pauses while they load.
        gc.disable()
        try:
            parts = [
                assemble_packed(idx, packed)
                async for idx, packed in self.store.scan_histories(partition, partitions)
            ]
            return self.frame_of(parts)
        finally:
            gc.enable()

    # -- real time --
    def score(
        self, frame: FeatureFrame, given: dict[str, np.ndarray], cycles: dict[int, float]
    ) -> tuple[dict, dict]:
        """Tag and segment masks over `frame`: the per-member scores computed here,
        `given` (manual and population tags) as the caller decides, then every rule
        tag and segment in dependency order. Shared by real time and runs."""
        given = {**given, **sc.per_member_scores(frame, cycles, self.categories, self.thresholds)}
        rules = in_dependency_order(self.rule_defs(), ex.referenced_tags)
        tag_masks = sc.compute_tags(frame, rules, given, self.categories)
        segs = in_dependency_order(self.segment_defs(), ex.referenced_segments)
        seg_masks = sc.compute_segments(frame, segs, tag_masks, self.categories)
        return tag_masks, seg_masks

    async def member_masks(self, frame: FeatureFrame) -> tuple[dict, dict]:
        """Masks for a small frame (one member, usually): per-member scores recomputed,
        population scores and manual tags as they stand."""
        given = self.masks_from_bitmaps(frame.idx, [*self.manual_names(), *self.population_names()])
        return self.score(frame, given, self.cycles_by_id())

    def diff_rows(
        self, idx: np.ndarray, tag_masks: dict, seg_masks: dict, skip: set[str]
    ) -> TagChangeSet:
        """What changes if rows `idx` get these masks (tags in `skip` untouched)."""
        changes = TagChangeSet()
        rows = sc.bitmap_of(idx)
        for target, masks, current in (
            (changes.tags, tag_masks, self.tag_bitmaps),
            (changes.segments, seg_masks, self.segment_bitmaps),
        ):
            for name, mask in masks.items():
                if name in skip:
                    continue
                now_in = sc.bitmap_of(idx, mask)
                before = current.get(name, BitMap()) & rows
                gained, lost = now_in - before, before - now_in
                if gained or lost:
                    target[name] = (gained, lost)
        return changes

    def apply_changes(self, changes: TagChangeSet, *, persisted: bool = False) -> None:
        """In memory. The bitmaps are marked dirty for flush(), unless the caller is
        writing them itself (`persisted`, a scoring run)."""
        today = self.today()
        for name, (gained, lost) in changes.tags.items():
            d = self.tags.get(name)
            if d is not None and d.kind != MANUAL:
                self.since.lost(name, lost)
                self.since.gained(name, gained, today)
        for bitmaps, dirty, changed in (
            (self.tag_bitmaps, self._dirty_tags, changes.tags),
            (self.segment_bitmaps, self._dirty_segments, changes.segments),
        ):
            for name, (gained, lost) in changed.items():
                bm = bitmaps.setdefault(name, BitMap())
                bm |= gained
                bm -= lost
            if persisted:
                dirty.difference_update(changed)
            else:
                dirty.update(changed)

    async def flush(self) -> None:
        """Persists bitmaps changed in real time."""
        async with self.lock:
            tags, segs = self._dirty_tags, self._dirty_segments
            self._dirty_tags, self._dirty_segments = set(), set()
            if tags:
                await self.store.put_bitmaps(
                    "tag",
                    {
                        t: self.tag_bitmaps[t].serialize()
                        for t in tags
                        if t not in self.tags or self.tags[t].kind != MANUAL
                    },
                )
            if segs:
                await self.store.put_bitmaps(
                    "segment", {s: self.segment_bitmaps[s].serialize() for s in segs}
                )
            await self.persist_since()

    async def persist_since(self) -> None:
        """Writes the since-cohorts changed since the last call (the caller holds
        the lock)."""
        put, delete = self.since.take_changes()
        if put or delete:
            await self.store.put_bitmaps(SINCE_KIND, put, delete=delete)

    async def record_segment_version(
        self, seg_id: str, gained: BitMap, lost: BitMap, reason: str, now: datetime
    ) -> None:
        """A new version of the segment with its diff against the previous one (the
        caller holds the lock and has updated the segment's bitmap)."""
        members = self.segment_bitmaps.get(seg_id, BitMap())
        at = epoch_micros(now)
        definition = replace(
            self.segments[seg_id],
            version=self.segments[seg_id].version + 1,
            count=len(members),
            update_time=at,
        )
        self.segments[seg_id] = definition
        await self.store.put_segment(definition)
        version = SegmentVersion(
            definition.version,
            len(members),
            len(gained),
            len(lost),
            self.member_ids_of(BitMap(gained.to_array()[:SAMPLE])),
            self.member_ids_of(BitMap(lost.to_array()[:SAMPLE])),
            reason,
            at,
        )
        await self.store.add_segment_version(seg_id, version, members.serialize())

    def tag_since_micros(self, idx: int, tag: str) -> int:
        """Since when the member has the tag: exact for manual tags, the start of
        the day for computed ones; 0 if not known."""
        if (idx, tag) in self.manual_meta:
            return self.manual_meta[(idx, tag)][1]
        day = self.since.day_of(tag, idx)
        return 0 if day is None else self.day_start_micros(day)

    def track_real_time(self, run_id: str) -> None:
        """From now on remember the members re-evaluated in real time (run_id starts)."""
        self._touched[run_id] = BitMap()

    def stop_tracking(self, run_id: str) -> BitMap:
        """The members re-evaluated since track_real_time(run_id); its tracking ends."""
        return self._touched.pop(run_id, BitMap())

    async def rescore_member(self, history: MemberHistory) -> TagChangeSet:
        """Re-evaluates one member from its history (no writes)."""
        for touched in self._touched.values():
            touched.add(history.idx)
        frame = self.frame_for([history])
        tag_masks, seg_masks = await self.member_masks(frame)
        skip = set(self.manual_names()) | set(self.population_names())
        return self.diff_rows(frame.idx, tag_masks, seg_masks, skip)

    def survivor_of(self, member_id: str) -> str:
        """The member that `member_id` now is: itself, or the one it was merged into
        (followed across merges of merges)."""
        for _ in range(len(self.merged) + 1):
            into = self.merged.get(member_id)
            if into is None:
                return member_id
            member_id = into
        raise RuntimeError("merged members form a cycle")

    def leaving(self, idx: int) -> TagChangeSet:
        """What changes when the member at `idx` leaves every tag and segment (merged
        into another); a scoring run under way leaves it alone too."""
        for touched in self._touched.values():
            touched.add(idx)
        changes = TagChangeSet()
        for target, bitmaps in (
            (changes.tags, self.tag_bitmaps),
            (changes.segments, self.segment_bitmaps),
        ):
            for name, bm in bitmaps.items():
                if idx in bm:
                    target[name] = (BitMap(), BitMap([idx]))
        return changes

    async def ensure_members(self, member_ids: list[str]) -> dict[str, int]:
        missing = [m for m in member_ids if m not in self.index]
        if missing:
            assigned = await self.store.index_members(missing)
            for member_id, idx in assigned.items():
                if idx >= len(self.ids):
                    self.ids.extend([""] * (idx + 1 - len(self.ids)))
                self.ids[idx] = member_id
                self.index[member_id] = idx
                if member_id not in self.merged:
                    self.universe.add(idx)
        return {m: self.index[m] for m in member_ids}
