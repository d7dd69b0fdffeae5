"""Segment use cases: preview, save (materialised as Roaring bitmaps with versions),
membership checks and streaming."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import numpy as np
from pyroaring import BitMap

from services.runtime.clock import epoch_micros
from services.runtime.errors import (
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from services.tagging import catalogue as cat
from services.tagging.catalogue import DOMAIN
from services.tagging.domain import evaluation
from services.tagging.domain import expressions as ex
from services.tagging.domain import scoring as sc
from services.tagging.domain.definitions import SegmentDefinition, SegmentVersion
from services.tagging.domain.segment_eval import evaluate_bitmap
from services.tagging.engine import TagEngine
from services.tagging.service import TaggingCore

# A stream cursor, as the chunks carry it: "<segment version>:<last member index sent>".
# Member indexes are bitmap positions (uint32), and the stream goes on from index + 1.
_CURSOR_RE = re.compile(r"([0-9]{1,20}):([0-9]{1,10})")
_LAST_MEMBER_INDEX = 2**32 - 1


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


class SegmentUseCases(TaggingCore):
    async def evaluate_everyone(self, expr: ex.Expr) -> BitMap:
        """An expression over the whole population, as it stands now."""
        engine = self.engine
        if ex.uses_only_bitmaps(expr):
            return evaluate_bitmap(expr, _Bitmaps(engine))
        frame = await engine.load_frame()
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

    def segment(self, seg_id: str) -> SegmentDefinition:
        d = self.engine.segments.get(seg_id)
        if d is None:
            raise not_found("segment", seg_id, domain=DOMAIN)
        return d

    def segment_count(self, seg_id: str) -> int:
        """Members now (real-time changes included)."""
        return len(self.engine.segment_bitmaps.get(seg_id, ()))

    def list_segments(self, after: str, limit: int) -> list[SegmentDefinition]:
        """Up to `limit` segments with ids after `after`, in id order."""
        return [d for k, d in sorted(self.engine.segments.items()) if k > after][:limit]

    async def preview(self, expression: str, sample: int) -> tuple[int, list[str]]:
        expr = self._checked("expression", expression, "~preview")
        members = await self.evaluate_everyone(expr)
        return len(members), self.engine.member_ids_of(BitMap(members.to_array()[:sample]))

    async def create_segment(
        self, seg_id: str, expression: str, display_name: str = "", description: str = ""
    ) -> SegmentDefinition:
        """A new segment, materialised at once (version 1)."""
        problems = cat.check_key("segment.id", seg_id)
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        expr = self._checked("segment.expression", expression, seg_id)
        engine = self.engine
        now = epoch_micros(self.now())
        async with engine.lock:
            if seg_id in engine.segments:
                raise already_exists("SEGMENT_EXISTS", f"segment {seg_id!r} exists", domain=DOMAIN)
            segment = SegmentDefinition(
                seg_id,
                expression,
                display_name or seg_id,
                description,
                create_time=now,
                update_time=now,
                expr=expr,
            )
            engine.segments[seg_id] = segment
            await self.store.put_segment(segment)
        await self._materialise(seg_id, "create")
        return engine.segments[seg_id]

    async def update_segment(
        self,
        seg_id: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        expression: str | None = None,
    ) -> SegmentDefinition:
        """Changes the fields given; a new expression rematerialises the segment."""
        self.segment(seg_id)
        expr = None
        if expression is not None:
            expr = self._checked("segment.expression", expression, seg_id)
        engine = self.engine
        async with engine.lock:
            d = engine.segments[seg_id]
            segment = replace(
                d,
                display_name=d.display_name if display_name is None else display_name,
                description=d.description if description is None else description,
                expression=d.expression if expression is None else expression,
                update_time=epoch_micros(self.now()),
                expr=expr or d.expr,
            )
            engine.segments[seg_id] = segment
            await self.store.put_segment(segment)
        if expr is not None:
            await self._materialise(seg_id, "update")
        return engine.segments[seg_id]

    def _checked(self, path: str, expression: str, seg_id: str) -> ex.Expr:
        expr = cat.check_expression(path, expression)
        cat.check_references(
            path,
            expr,
            tags=self.engine.tags,
            segments=self.engine.segments,
            self_key=seg_id,
            self_kind="segment",
        )
        return expr

    async def _materialise(self, seg_id: str, reason: str) -> None:
        engine = self.engine
        expr = engine.segments[seg_id].expr
        assert expr is not None  # a segment always has its expression
        members = await self.evaluate_everyone(expr)
        async with engine.lock:
            before = engine.segment_bitmaps.get(seg_id, BitMap())
            engine.segment_bitmaps[seg_id] = members
            await self.store.put_bitmaps("segment", {seg_id: members.serialize()})
            await engine.record_segment_version(
                seg_id, members - before, before - members, reason, self.now()
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
        version = self.segment(seg_id).version
        after = -1
        if cursor:
            issued = _CURSOR_RE.fullmatch(cursor)
            if issued is None or int(issued[2]) >= _LAST_MEMBER_INDEX:
                raise invalid_argument(
                    [("cursor", "is not a cursor this service issued")], domain=DOMAIN
                )
            cursor_version, after = int(issued[1]), int(issued[2])
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

    async def segment_versions(self, seg_id: str) -> list[SegmentVersion]:
        """Newest first."""
        self.segment(seg_id)
        return await self.store.segment_versions(seg_id)
