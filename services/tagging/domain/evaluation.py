"""Evaluating a parsed expression over every member at once with numpy: one boolean
(or float) array per node, no per-member Python loop."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.tagging.domain.expressions import (
    BOOL,
    Arith,
    Bool,
    BoolOp,
    Call,
    Compare,
    Expr,
    Feature,
    Neg,
    Not,
    Num,
    type_of,
)
from services.tagging.domain.features import NEVER, NEVER_DAYS, FeatureFrame


class EvalContext(Protocol):
    """What evaluate() needs: columns over the same n members, in the same order."""

    @property
    def n(self) -> int: ...
    @property
    def today(self) -> int: ...
    def feature(self, name: str) -> np.ndarray: ...
    def tag_mask(self, name: str) -> np.ndarray: ...
    def segment_mask(self, segment_id: str) -> np.ndarray: ...
    def category(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first_day, last_day, count), NEVER (-1) days and 0 count for no purchase."""
        ...


@dataclass
class FrameContext:
    """EvalContext over a FeatureFrame. Unknown tags, segments and categories are
    all-False ("never bought")."""

    frame: FeatureFrame
    tag_masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    segment_masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    category_ids: Mapping[str, int] = field(default_factory=dict)
    _cats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _owner: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.frame)

    @property
    def today(self) -> int:
        return self.frame.today

    def feature(self, name: str) -> np.ndarray:
        if name not in self.frame.columns:
            raise KeyError(f"feature {name!r} is not in the frame")
        return self.frame.columns[name]

    def _mask(self, masks: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        mask = masks.get(key)
        if mask is None:
            return np.zeros(self.n, dtype=bool)
        if len(mask) != self.n:
            raise ValueError(f"mask for {key!r} has {len(mask)} rows, the frame {self.n}")
        return np.asarray(mask, dtype=bool)

    def tag_mask(self, name: str) -> np.ndarray:
        return self._mask(self.tag_masks, name)

    def segment_mask(self, segment_id: str) -> np.ndarray:
        return self._mask(self.segment_masks, segment_id)

    def category(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if name not in self._cats:
            f, n = self.frame, self.n
            first = np.full(n, NEVER, dtype=np.int64)
            last = np.full(n, NEVER, dtype=np.int64)
            count = np.zeros(n, dtype=np.int64)
            cid = self.category_ids.get(name)
            if cid is not None:
                if self._owner is None:
                    self._owner = np.repeat(np.arange(n), np.diff(f.cat_offsets))
                sel = np.flatnonzero(np.asarray(f.cat_id) == cid)
                rows = self._owner[sel]
                first[rows] = f.cat_first_day[sel]
                last[rows] = f.cat_last_day[sel]
                count[rows] = f.cat_count[sel]
            self._cats[name] = (first, last, count)
        return self._cats[name]


def evaluate(expr: Expr, ctx: EvalContext) -> np.ndarray:
    """Boolean mask (length ctx.n, a fresh array) of the members matching `expr`."""
    if type_of(expr) != BOOL:
        raise ValueError("evaluate() needs a boolean expression")
    with np.errstate(all="ignore"):
        out = _eval(expr, ctx)
    return np.array(np.broadcast_to(out, (ctx.n,)), dtype=bool)


def _eval(e: Expr, ctx: EvalContext) -> np.ndarray:
    match e:
        case Num(value):
            return np.float64(value)  # type: ignore[return-value]
        case Bool(value):
            return np.bool_(value)  # type: ignore[return-value]
        case Feature(name):
            values: np.ndarray = np.asarray(ctx.feature(name), dtype=np.float64)
            return values
        case Not(operand):
            return ~_eval(operand, ctx)
        case Neg(operand):
            return -_eval(operand, ctx)
        case BoolOp(op, operands):
            acc = _eval(operands[0], ctx)
            for x in operands[1:]:
                acc = (acc & _eval(x, ctx)) if op == "and" else (acc | _eval(x, ctx))
            return acc
        case Compare(op, left, right):
            return _COMPARE[op](_eval(left, ctx), _eval(right, ctx))
        case Arith(ops, operands):
            acc = _eval(operands[0], ctx)
            for arith, x in zip(ops, operands[1:], strict=True):
                acc = _ARITH[arith](acc, _eval(x, ctx))
            return acc
        case Call():
            return _call(e, ctx)
    raise TypeError(f"not an expression node: {e!r}")


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.broadcast_arrays(a, b)
    out = np.zeros(a.shape)
    np.divide(a, b, out=out, where=b != 0)
    return out if out.ndim else out[()]


_COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_ARITH: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": _divide,
}


def _call(e: Call, ctx: EvalContext) -> np.ndarray:
    arg = str(e.args[0])
    if e.name == "has_tag":
        return np.asarray(ctx.tag_mask(arg), dtype=bool)
    if e.name == "in_segment":
        return np.asarray(ctx.segment_mask(arg), dtype=bool)
    _, last, count = ctx.category(arg)
    last = np.asarray(last, dtype=np.int64)
    if e.name == "bought":
        return (last >= 0) & ((ctx.today - last) < e.args[1])
    if e.name == "category_orders":
        return np.asarray(count, dtype=np.float64)
    return np.where(last >= 0, ctx.today - last, NEVER_DAYS).astype(np.float64)
