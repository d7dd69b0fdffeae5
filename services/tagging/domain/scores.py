"""Per-member scored tags over a `FeatureFrame` (lifecycle stage, repurchase due per
category), and the code tables of every scored tag (RFM classes, lifecycle stages,
value quadrants).

Pure numpy: every function scores all members at once (no per-member Python loop) and
does no I/O. Codes are small stable ints (int8 columns; 0 = "none"), each with a
(key, 中文 name) table, so tag definitions and stored results can refer to them.

Definitions shared by every score:
- a *buyer* is a member with `orders_total > 0` (lifetime paid orders, net of full
  refunds); members without are "never bought" (RFM 0, lifecycle prospect);
- "within N days" means `days_since_* < N`, as for the `*_Nd` feature windows
  (an order today is 0 days ago; `orders_90d` counts days_since 0..89).

Lifecycle and repurchase due are per-member given their parameters (thresholds,
cycles), so one member can be re-evaluated in real time. The population-relative
scores (RFM, value quadrant) and the learned repurchase cycles live in
services.tagging.domain.population, computed from mergeable statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.tagging.domain.features import NEVER, NEVER_DAYS, FeatureFrame

__all__ = [
    "DEFAULT_LIFECYCLE",
    "LIFECYCLE",
    "LIFECYCLE_CODE",
    "QUADRANTS",
    "QUADRANT_CODE",
    "RFM_CLASSES",
    "RFM_CLASS_CODE",
    "LifecycleThresholds",
    "RepurchaseDue",
    "bought",
    "effective_cycles",
    "lifecycle",
    "lifecycle_of",
    "repurchase_due",
]


def bought(frame: FeatureFrame) -> np.ndarray:
    """bool per member: has bought at least once (orders_total > 0)."""
    return frame.columns["orders_total"] > 0


# ------------------------------------------------------------------ code tables
# Of the population-relative scores (services.tagging.domain.population); the
# lifecycle table is with lifecycle() below.

# RFM classes (population.rfm) by R/F/M high or low; 0 = never bought.
RFM_CLASSES: dict[int, tuple[str, str]] = {
    1: ("important_value", "重要价值"),  # R high, F high, M high
    2: ("important_development", "重要发展"),  # R high, F low, M high
    3: ("important_retention", "重要保持"),  # R low, F high, M high
    4: ("important_winback", "重要挽留"),  # R low, F low, M high
    5: ("general_value", "一般价值"),  # R high, F high, M low
    6: ("general_development", "一般发展"),  # R high, F low, M low
    7: ("general_retention", "一般保持"),  # R low, F high, M low
    8: ("general_winback", "一般挽留"),  # R low, F low, M low
}
RFM_CLASS_CODE: dict[str, int] = {key: code for code, (key, _) in RFM_CLASSES.items()}

# Purchase frequency x interaction quadrants (population.value_quadrant).
QUADRANTS: dict[int, tuple[str, str]] = {
    1: ("high_freq_high_interaction", "高频高互动"),
    2: ("high_freq_low_interaction", "高频低互动"),
    3: ("low_freq_high_interaction", "低频高互动"),
    4: ("low_freq_low_interaction", "低频低互动"),
}
QUADRANT_CODE: dict[str, int] = {key: code for code, (key, _) in QUADRANTS.items()}


# --------------------------------------------------------------------- lifecycle

LIFECYCLE: dict[int, tuple[str, str]] = {
    1: ("new", "新客"),
    2: ("active", "活跃"),
    3: ("sleeping", "沉睡"),
    4: ("churned", "流失"),
    5: ("prospect", "未购"),
}
LIFECYCLE_CODE: dict[str, int] = {key: code for code, (key, _) in LIFECYCLE.items()}


@dataclass(frozen=True)
class LifecycleThresholds:
    """Day counts for lifecycle(); see there. Requires
    0 <= new_days and 0 < active_days <= sleeping_days."""

    new_days: int = 30
    active_days: int = 90
    sleeping_days: int = 180

    def __post_init__(self) -> None:
        if not (self.new_days >= 0 and 0 < self.active_days <= self.sleeping_days):
            raise ValueError(f"invalid lifecycle thresholds: {self}")


DEFAULT_LIFECYCLE = LifecycleThresholds()


def lifecycle_of(
    days_since_registered: npt.ArrayLike,
    orders_total: npt.ArrayLike,
    days_since_last_order: npt.ArrayLike,
    thresholds: LifecycleThresholds = DEFAULT_LIFECYCLE,
    days_since_first_order: npt.ArrayLike = NEVER_DAYS,
) -> np.ndarray:
    """The lifecycle rule on plain values (arrays or scalars, broadcast): the same
    rule lifecycle() applies to a frame, for re-evaluating one member in real time.

    A member's first known activity is the earlier of registration and first order
    (either may be unknown: NEVER_DAYS ago): a member imported today with an order
    from 500 days ago is not new. First match wins:
      new      first known activity < new_days ago (bought or not; nothing known:
               never new)
      prospect never bought (orders_total == 0)
      active   days_since_last_order < active_days
      sleeping days_since_last_order < sleeping_days
      churned  otherwise
    Returns int8 codes of LIFECYCLE (a 0-d array for scalar input; int() it)."""
    reg = np.asarray(days_since_registered)
    first_order = np.asarray(days_since_first_order)
    last = np.asarray(days_since_last_order)
    buyer = np.asarray(orders_total) > 0
    # The larger "days since" is the earlier day; NEVER_DAYS means unknown.
    first_seen = np.where(
        reg >= NEVER_DAYS,
        first_order,
        np.where(first_order >= NEVER_DAYS, reg, np.maximum(reg, first_order)),
    )
    t = thresholds
    code = np.select(
        [first_seen < t.new_days, ~buyer, last < t.active_days, last < t.sleeping_days],
        [1, 5, 2, 3],
        default=4,
    )
    return code.astype(np.int8)


def lifecycle(
    frame: FeatureFrame, thresholds: LifecycleThresholds = DEFAULT_LIFECYCLE
) -> np.ndarray:
    """int8 LIFECYCLE code per member (see lifecycle_of for the rule). Per-member:
    no population dependence."""
    c = frame.columns
    return lifecycle_of(
        c["days_since_registered"],
        c["orders_total"],
        c["days_since_last_order"],
        thresholds,
        c["days_since_first_order"],
    )


# ---------------------------------------------------------------- repurchase due


def effective_cycles(configured: dict[int, float], learned: dict[int, float]) -> dict[int, float]:
    """Learned cycles overridden by the operator-configured ones (which must be
    finite and > 0 days)."""
    for cat, days in configured.items():
        if not (np.isfinite(days) and days > 0):
            raise ValueError(f"configured cycle of category {cat} must be > 0 days: {days}")
    return {**learned, **configured}


@dataclass(frozen=True)
class RepurchaseDue:
    """Repurchase due dates, flat and aligned with frame.cat_* (entry e is member
    row[e]'s purchases of category cat_id[e]).

    known: the category has a cycle (and the member bought it).
    cycle_days: the cycle rounded half up to whole days, at least 1 (0 if unknown).
    due_day: cat_last_day + cycle_days (NEVER = -1 if unknown).
    is_due: known and today >= due_day.
    Rows are positions in the frame; frame.idx[rows] are the member indexes."""

    today: int
    n_members: int
    row: np.ndarray  # int64 member row per entry
    cat_id: np.ndarray  # the frame's cat_id
    known: np.ndarray  # bool
    cycle_days: np.ndarray  # int64
    due_day: np.ndarray  # int64
    is_due: np.ndarray  # bool

    def due_mask(self, category_id: int) -> np.ndarray:
        """bool over members: due now to repurchase category_id."""
        mask = np.zeros(self.n_members, dtype=bool)
        mask[self.row[self.is_due & (self.cat_id == category_id)]] = True
        return mask

    def due_rows_by_category(self) -> dict[int, np.ndarray]:
        """Category id -> ascending int64 rows of the members due now (only
        categories with someone due)."""
        e = np.flatnonzero(self.is_due)
        if len(e) == 0:
            return {}
        cats = self.cat_id[e]
        order = np.argsort(cats, kind="stable")  # rows stay ascending within a category
        cats, rows = cats[order], self.row[e][order]
        ids, start = np.unique(cats, return_index=True)
        return {int(c): r for c, r in zip(ids.tolist(), np.split(rows, start[1:]), strict=True)}


def _round_days(days: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.floor(days + 0.5)).astype(np.int64)


def repurchase_due(frame: FeatureFrame, cycles: dict[int, float]) -> RepurchaseDue:
    """Due date of every (member, category) the member bought whose category has a
    cycle in `cycles` (e.g. effective_cycles(configured,
    population.learned_cycles(stats)))."""
    n = len(frame)
    cat_id = frame.cat_id
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(frame.cat_offsets))
    entries = len(cat_id)
    if cycles:
        keys = np.array(sorted(cycles), dtype=np.int64)
        days = np.array([cycles[k] for k in keys.tolist()], dtype=np.float64)
        if not np.all(np.isfinite(days) & (days > 0)):
            raise ValueError("cycles must be finite and > 0 days")
        rounded = _round_days(days)
        pos = np.minimum(np.searchsorted(keys, cat_id), len(keys) - 1)
        last = frame.cat_last_day.astype(np.int64)
        known = (keys[pos] == cat_id) & (frame.cat_count > 0) & (last >= 0)
        cycle_days = np.where(known, rounded[pos], 0)
        due_day = np.where(known, last + cycle_days, NEVER)
        is_due = known & (frame.today >= due_day)
    else:
        known = np.zeros(entries, dtype=bool)
        cycle_days = np.zeros(entries, dtype=np.int64)
        due_day = np.full(entries, NEVER, dtype=np.int64)
        is_due = known.copy()
    return RepurchaseDue(frame.today, n, row, cat_id, known, cycle_days, due_day, is_due)
