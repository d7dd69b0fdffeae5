"""Segment use cases: preview, save (materialised as Roaring bitmaps with versions),
membership checks and streaming."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

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
from services.tagging.domain.segment_eval import evaluate_bitmap
from services.tagging.engine import Definition, TagEngine
from services.tagging.partition import record_segment_version
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
        expr = engine.segments[seg_id].expr
        assert expr is not None  # a segment always has its expression
        members = await self.evaluate_everyone(expr)
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

    async def segment_versions(self, seg_id: str) -> list[dict]:
        self.segment(seg_id)
        return [doc for doc, _ in await self.store.list_versions("segment", seg_id)]
