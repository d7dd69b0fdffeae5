"""Population-relative scores (RFM quintiles and classes, the value quadrant, learned
repurchase cycles), computed from mergeable statistics.

This module is the only home of the scores that depend on everyone. A batch run split
into N partitions computes `PopulationStats.of(frame)` per partition (integer
histograms), merges them (`PopulationStats.merge`, after shipping them between
processes with to_bytes/from_bytes if need be), then scores every partition against
the merged statistics. Each score is a function of the member's own features and the
merged histograms only, and merging is exact integer addition, so N partitions give
exactly the result of one.

Histograms are over integer values: recency in days, frequency in orders, monetary on
a log scale of about 5% steps (`money_bucket`), interactions in count, repurchase gaps
in whole days. A histogram of size S holds the values 0..S-1, its last slot also
counting every larger value (so scores and medians saturate there).

Definitions shared with services.tagging.domain.scores: a *buyer* has bought at least
once (orders_total > 0); code tables (RFM_CLASSES, QUADRANTS) live there and are
re-exported here."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from services.tagging.domain.features import FeatureFrame
from services.tagging.domain.scores import QUADRANTS, RFM_CLASSES, bought

__all__ = [
    "MAX_DAYS",
    "MAX_GAP",
    "MAX_INTERACTIONS",
    "MAX_ORDERS",
    "MONEY_BUCKETS",
    "QUADRANTS",
    "RFM_CLASSES",
    "PopulationStats",
    "QuadrantThresholds",
    "Rfm",
    "learned_cycles",
    "mean_gap_days",
    "median",
    "money_bucket",
    "quadrant_thresholds",
    "quintile_table",
    "rfm",
    "value_quadrant",
]

MAX_DAYS = 4000  # recency histogram: days since the last order 0..3999
MAX_ORDERS = 2000  # frequency histogram: orders in 365 days 0..1999
MAX_INTERACTIONS = 2000  # interactions in 90 days 0..1999
MAX_GAP = 731  # repurchase gap histogram: mean gap 0..730 days
_M_STEPS_PER_E = 20  # monetary bucket = floor(ln(1 + yuan) * 20): about 5% wide
MONEY_BUCKETS = 64 * _M_STEPS_PER_E  # up to e**64 yuan


def money_bucket(fen: np.ndarray) -> np.ndarray:
    """int64 monetary bucket of an amount in fen: floor(20 * ln(1 + yuan)), 0 for
    amounts <= 0. Monotone, so bucketing only merges near-equal amounts into ties."""
    yuan = np.maximum(np.asarray(fen, dtype=np.float64), 0.0) / 100.0
    buckets: np.ndarray = np.floor(np.log1p(yuan) * _M_STEPS_PER_E).astype(np.int64)
    return buckets


def _slot(values: np.ndarray, size: int) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=np.int64), 0, size - 1)


def _hist(values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(_slot(values, size), minlength=size).astype(np.int64)


def mean_gap_days(first_day: np.ndarray, last_day: np.ndarray, count: np.ndarray) -> np.ndarray:
    """A member's mean gap between purchases of a category, in whole days:
    (last - first) / (count - 1) rounded half up (in exact integers), at least 1.
    Meaningful for count >= 2 and last > first only (see PopulationStats.of)."""
    span = np.asarray(last_day, dtype=np.int64) - np.asarray(first_day, dtype=np.int64)
    k = np.maximum(np.asarray(count, dtype=np.int64) - 1, 1)
    gaps: np.ndarray = np.maximum(1, (2 * span + k) // (2 * k))
    return gaps


@dataclass(eq=False)
class PopulationStats:
    """Histograms over a population (a frame, or several merged). Compare with
    `same_as`, not ==."""

    recency: np.ndarray  # buyers: days since the last order (MAX_DAYS)
    frequency: np.ndarray  # buyers: orders in 365 days (MAX_ORDERS)
    monetary: np.ndarray  # buyers: money_bucket(spend in 365 days) (MONEY_BUCKETS)
    interactions: np.ndarray  # members with interactions_90d >= 1 (MAX_INTERACTIONS)
    gaps: dict[int, np.ndarray] = field(default_factory=dict)  # category -> (MAX_GAP)

    _SIZES = {
        "recency": MAX_DAYS,
        "frequency": MAX_ORDERS,
        "monetary": MONEY_BUCKETS,
        "interactions": MAX_INTERACTIONS,
    }

    @classmethod
    def empty(cls) -> PopulationStats:
        r, f, m, i = (np.zeros(size, dtype=np.int64) for size in cls._SIZES.values())
        return cls(r, f, m, i)

    @classmethod
    def of(cls, frame: FeatureFrame) -> PopulationStats:
        """Histograms of one frame (a whole population or one partition of it).

        gaps: per category, the mean_gap_days of every member who bought it at least
        twice on different days (cat_count >= 2 and cat_last_day > cat_first_day):
        members whose purchases all fell on one day show no interval, only a
        multi-unit purchase, and are left out."""
        c = frame.columns
        buyer = bought(frame)
        inter = c["interactions_90d"]
        stats = cls(
            recency=_hist(c["days_since_last_order"][buyer], MAX_DAYS),
            frequency=_hist(c["orders_365d"][buyer], MAX_ORDERS),
            monetary=_hist(money_bucket(c["spend_365d"][buyer]), MONEY_BUCKETS),
            interactions=_hist(inter[inter >= 1], MAX_INTERACTIONS),
        )
        first = frame.cat_first_day.astype(np.int64)
        last = frame.cat_last_day.astype(np.int64)
        count = frame.cat_count.astype(np.int64)
        sel = (count >= 2) & (first >= 0) & (last > first)
        if sel.any():
            gap = _slot(mean_gap_days(first[sel], last[sel], count[sel]), MAX_GAP)
            cats = frame.cat_id[sel].astype(np.int64)
            ids, inverse = np.unique(cats, return_inverse=True)
            flat = np.bincount(
                inverse.ravel() * MAX_GAP + gap, minlength=len(ids) * MAX_GAP
            ).astype(np.int64)
            for i, cat in enumerate(ids.tolist()):
                stats.gaps[int(cat)] = flat[i * MAX_GAP : (i + 1) * MAX_GAP].copy()
        return stats

    @classmethod
    def merge(cls, parts: list[PopulationStats]) -> PopulationStats:
        """The statistics of the union of the parts' (disjoint) populations."""
        out = cls.empty()
        for p in parts:
            p.check()
            for name in cls._SIZES:
                np.add(getattr(out, name), getattr(p, name), out=getattr(out, name))
            for cat, hist in p.gaps.items():
                if cat in out.gaps:
                    out.gaps[cat] = out.gaps[cat] + hist
                else:
                    out.gaps[cat] = np.array(hist, dtype=np.int64)
        return out

    def check(self) -> None:
        """ValueError unless every histogram has the size this module uses."""
        sizes = [(name, getattr(self, name), size) for name, size in self._SIZES.items()]
        sizes += [(f"gaps[{cat}]", h, MAX_GAP) for cat, h in self.gaps.items()]
        for name, hist, size in sizes:
            if np.shape(hist) != (size,):
                raise ValueError(
                    f"population stats {name}: shape {np.shape(hist)}, expected ({size},)"
                )

    @property
    def buyers(self) -> int:
        return int(self.recency.sum())

    def same_as(self, other: PopulationStats) -> bool:
        return (
            all(np.array_equal(getattr(self, n), getattr(other, n)) for n in self._SIZES)
            and self.gaps.keys() == other.gaps.keys()
            and all(np.array_equal(h, other.gaps[c]) for c, h in self.gaps.items())
        )

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {name: getattr(self, name) for name in self._SIZES}
        arrays.update({f"gap_{cat}": h for cat, h in sorted(self.gaps.items())})
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> PopulationStats:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            gaps = {
                int(k[4:]): data[k].astype(np.int64) for k in data.files if k.startswith("gap_")
            }
            r, f, m, i = (data[name].astype(np.int64) for name in cls._SIZES)
            stats = cls(r, f, m, i, gaps=gaps)
        stats.check()
        return stats


# ------------------------------------------------------------------ statistics


def quintile_table(hist: np.ndarray) -> np.ndarray:
    """int8 quintile score 1..5 of every value slot of a histogram, higher value ->
    higher score (the mid-rank rule, exactly as if the values were ranked one by one):

    a value held by c members with L members below it has the average rank
    L + (c + 1) / 2 among the m counted, the mid-percentile p = (2L + c) / (2m), and the
    score 1 + floor(5p): the quintile p falls in, p exactly on a cut (0.2, 0.4, ...)
    going up. Computed in exact integers. Equal values share a score; m distinct
    values (m a multiple of 5) fill the five scores equally; if everyone ties (or the
    histogram is empty) the score is 3."""
    h = np.asarray(hist, dtype=np.int64)
    total = int(h.sum())
    if total == 0:
        return np.full(len(h), 3, dtype=np.int8)
    below = np.cumsum(h) - h
    return (1 + (5 * (2 * below + h)) // (2 * total)).astype(np.int8)


def median(hist: np.ndarray) -> float:
    """The median of the values a histogram counts, as np.median would give it (the
    mean of the two middle values when the count is even); 0.0 if empty."""
    h = np.asarray(hist, dtype=np.int64)
    total = int(h.sum())
    if total == 0:
        return 0.0
    cum = np.cumsum(h)
    # 0-based positions (total-1)//2 and total//2: the smallest v with cum[v] > pos
    lo, hi = np.searchsorted(cum, [(total - 1) // 2 + 1, total // 2 + 1], side="left")
    return (int(lo) + int(hi)) / 2


# ------------------------------------------------------------------------- RFM


@dataclass(frozen=True)
class Rfm:
    """int8 columns over the frame's members, plus the population's class cuts.

    r, f, m: quintile scores 1..5 among the population's buyers, 0 for non-buyers.
    rfm_class: 0 for non-buyers, else a code of RFM_CLASSES.
    r_mean, f_mean, m_mean: the population buyers' mean score; a score >= its mean is
    "high". buyers: the population's buyer count."""

    r: np.ndarray
    f: np.ndarray
    m: np.ndarray
    rfm_class: np.ndarray
    r_mean: float = 0.0
    f_mean: float = 0.0
    m_mean: float = 0.0
    buyers: int = 0


def rfm(frame: FeatureFrame, stats: PopulationStats) -> Rfm:
    """RFM scores and classes of the frame's members against a population.

    R scores days_since_last_order (fewer days -> higher), F orders_365d, M
    money_bucket(spend_365d), each with quintile_table over the population's buyers;
    members who never bought (orders_total == 0) get 0 everywhere. F and M use the
    365-day window, the classic RFM period: a buyer whose orders all predate it scores
    lowest on both and, being long gone, lands in general_winback as intended.

    High/low per dimension: score >= the population buyers' mean of that score (a
    data-driven cut that adapts to skewed, tie-heavy distributions where a fixed cut
    at 3 would not). The mean comes from the histograms (sum over values of count x
    score), so it is mergeable; compared exactly as score * buyers >= sum of scores.
    Against statistics without buyers every score ties at 3 and counts as high."""
    c = frame.columns
    buyer = bought(frame)
    n_pop = stats.buyers
    dims = (
        # Recency: fewer days is better, so score the reversed histogram.
        (
            quintile_table(stats.recency[::-1])[::-1],
            stats.recency,
            _slot(c["days_since_last_order"], MAX_DAYS),
        ),
        (quintile_table(stats.frequency), stats.frequency, _slot(c["orders_365d"], MAX_ORDERS)),
        (
            quintile_table(stats.monetary),
            stats.monetary,
            _slot(money_bucket(c["spend_365d"]), MONEY_BUCKETS),
        ),
    )
    scored, highs, means = [], [], []
    for table, hist, slot in dims:
        s = np.where(buyer, table[slot], 0).astype(np.int8)
        if n_pop:
            total = int((hist * table).sum())
            highs.append(s.astype(np.int64) * n_pop >= total)
            means.append(total / n_pop)
        else:
            highs.append(s >= 3)
            means.append(3.0)
        scored.append(s)
    r_hi, f_hi, m_hi = highs
    # 1 + 4*(M low) + 2*(R low) + (F low): the code order of RFM_CLASSES.
    code = np.where(buyer, 1 + 4 * ~m_hi + 2 * ~r_hi + ~f_hi, 0).astype(np.int8)
    (r, f, m), (r_mean, f_mean, m_mean) = scored, means
    return Rfm(r, f, m, code, r_mean, f_mean, m_mean, n_pop)


# --------------------------------------------------------------- value quadrant


@dataclass(frozen=True)
class QuadrantThresholds:
    """A member is high-frequency when orders_365d >= frequency, high-interaction
    when interactions_90d >= interaction. Both are >= 1 when from quadrant_thresholds."""

    frequency: float
    interaction: float


def quadrant_thresholds(stats: PopulationStats) -> QuadrantThresholds:
    """frequency = max(1, median of orders_365d over members with orders_365d >= 1),
    interaction = max(1, median of interactions_90d over members with any).
    Both medians are over the active part of the population only (zeros would pull
    the median to 0 and make nearly everyone "high"); 1 when nobody qualifies.
    (Members with orders_365d >= 1 are buyers, so the buyers' frequency histogram
    without its 0 slot counts exactly them.)"""
    active_f = stats.frequency.copy()
    active_f[0] = 0
    active_i = stats.interactions.copy()
    active_i[0] = 0
    return QuadrantThresholds(max(1.0, median(active_f)), max(1.0, median(active_i)))


def value_quadrant(
    frame: FeatureFrame, population: PopulationStats | QuadrantThresholds
) -> np.ndarray:
    """int8 QUADRANTS code per member, against a population's statistics (thresholds
    from quadrant_thresholds) or fixed thresholds. Members who never bought and never
    interacted are low/low (4)."""
    t = quadrant_thresholds(population) if isinstance(population, PopulationStats) else population
    c = frame.columns
    f_hi = c["orders_365d"] >= t.frequency
    i_hi = c["interactions_90d"] >= t.interaction
    return (1 + 2 * ~f_hi + ~i_hi).astype(np.int8)


# ------------------------------------------------------------- learned cycles


def learned_cycles(stats: PopulationStats, min_members: int = 20) -> dict[int, float]:
    """Purchase cycle in days per category: the median (np.median's, so possibly a
    half day) of its members' mean_gap_days, over the members PopulationStats.of counts
    (bought it at least twice, on different days). Categories with fewer than
    min_members such members are omitted. Gaps saturate at MAX_GAP - 1 days.
    scores.repurchase_due rounds a cycle half up to whole days."""
    if min_members < 1:
        raise ValueError("min_members must be >= 1")
    return {cat: median(h) for cat, h in sorted(stats.gaps.items()) if int(h.sum()) >= min_members}
