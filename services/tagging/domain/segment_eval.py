"""Segment evaluation on Roaring bitmaps of member indexes.

Tags and segments are kept as bitmaps; `evaluate_bitmap` maps and / or / not (and
== / != between booleans) onto bitmap algebra, and hands every subtree that needs
member data (features, categories) to the context's `mask_to_bitmap`, which evaluates
it with numpy. Such subtrees never mention a tag or a segment, and the sibling
subtrees of one and / or are handed over together, in a single call."""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from pyroaring import BitMap

from services.tagging.domain.evaluation import FrameContext, evaluate
from services.tagging.domain.expressions import (
    BOOL,
    Bool,
    BoolOp,
    Call,
    Compare,
    Expr,
    Not,
    type_of,
    uses_only_bitmaps,
    walk,
)


class BitmapContext(Protocol):
    @property
    def universe(self) -> BitMap:
        """Every member index the segment is drawn from."""
        ...

    def tag_bitmap(self, name: str) -> BitMap: ...
    def segment_bitmap(self, segment_id: str) -> BitMap: ...
    def mask_to_bitmap(self, expr: Expr) -> BitMap:
        """Member indexes for which the boolean `expr` (no tags, no segments) holds."""
        ...


def _data_only(expr: Expr) -> bool:
    """Needs member data (features, categories) and mentions no tag or segment."""
    return not uses_only_bitmaps(expr) and not any(
        isinstance(n, Call) and n.name in ("has_tag", "in_segment") for n in walk(expr)
    )


def evaluate_bitmap(expr: Expr, ctx: BitmapContext) -> BitMap:
    """The member indexes (within ctx.universe) matching the boolean `expr`; a new bitmap."""
    if type_of(expr) != BOOL:
        raise ValueError("evaluate_bitmap() needs a boolean expression")
    return _eval(expr, ctx)


def _eval(e: Expr, ctx: BitmapContext) -> BitMap:
    if _data_only(e):
        return ctx.mask_to_bitmap(e) & ctx.universe
    if isinstance(e, Bool):
        return BitMap(ctx.universe) if e.value else BitMap()
    if isinstance(e, Call):
        name = str(e.args[0])
        bm = ctx.tag_bitmap(name) if e.name == "has_tag" else ctx.segment_bitmap(name)
        return bm & ctx.universe
    if isinstance(e, Not):
        return ctx.universe - _eval(e.operand, ctx)
    if isinstance(e, Compare):  # == / != between booleans
        differ = _eval(e.left, ctx) ^ _eval(e.right, ctx)
        return ctx.universe - differ if e.op == "==" else differ
    if isinstance(e, BoolOp):
        data = [o for o in e.operands if _data_only(o)]
        parts = [_eval(o, ctx) for o in e.operands if not _data_only(o)]
        if data:
            grouped = data[0] if len(data) == 1 else BoolOp(e.op, tuple(data), data[0].pos)
            parts.append(_eval(grouped, ctx))
        return BitMap.intersection(*parts) if e.op == "and" else BitMap.union(*parts)
    raise TypeError(f"not a boolean expression node: {e!r}")


def bitmap_from_indexes(indexes: np.ndarray) -> BitMap:
    """A bitmap of uint32 member indexes, built without a Python loop."""
    return BitMap(array("I", np.ascontiguousarray(indexes, dtype=np.uint32).tobytes()))


@dataclass
class FrameBitmapContext:
    """BitmapContext over a FrameContext: bitmaps hold member indexes (frame.idx values);
    data subtrees are evaluated with numpy over the frame."""

    frame_ctx: FrameContext
    tag_bitmaps: Mapping[str, BitMap] = field(default_factory=dict)
    segment_bitmaps: Mapping[str, BitMap] = field(default_factory=dict)
    universe: BitMap = field(init=False)

    def __post_init__(self) -> None:
        self.universe = bitmap_from_indexes(self.frame_ctx.frame.idx)

    def tag_bitmap(self, name: str) -> BitMap:
        return self.tag_bitmaps.get(name, BitMap())

    def segment_bitmap(self, segment_id: str) -> BitMap:
        return self.segment_bitmaps.get(segment_id, BitMap())

    def mask_to_bitmap(self, expr: Expr) -> BitMap:
        return bitmap_from_indexes(self.frame_ctx.frame.idx[evaluate(expr, self.frame_ctx)])
