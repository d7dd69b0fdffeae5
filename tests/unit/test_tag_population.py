"""Population-relative scores (services/tagging/domain/population.py): RFM, value
quadrant and learned repurchase cycles from mergeable histograms. Hand-built
populations with known answers, plain-Python references on seeded random
populations, and the property batch runs rely on: scoring N partitions against their
merged statistics gives exactly the result of scoring the whole population."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from fractions import Fraction

import numpy as np
import pytest

from services.tagging.domain import population as pop
from services.tagging.domain import scores
from services.tagging.domain.features import (
    HISTORY_DAYS,
    NEVER,
    FeatureFrame,
    compute_features,
)
from services.tagging.domain.history import MemberHistory, assemble
from tests.unit.test_tag_scores import TODAY, frame_of, random_history

# -- building populations --


def stats_of(members: list[dict]) -> tuple[FeatureFrame, pop.PopulationStats]:
    frame = frame_of(members)
    return frame, pop.PopulationStats.of(frame)


def hist_of(values: list[int], size: int = 16) -> np.ndarray:
    return np.bincount(np.array(values, dtype=np.int64), minlength=size)


def random_members(n: int, seed: int, n_cats: int = 12) -> list[MemberHistory]:
    """Seeded members as the event consumer keeps them: orders in the history window
    (some refunded), lapsed buyers with orders only before it, per-category stats
    (some same-day only), interactions, a few unknown registration days."""
    rng = np.random.default_rng(seed)
    members = []
    for i in range(n):
        reg = TODAY - int(rng.integers(0, 1500)) if rng.random() < 0.97 else NEVER
        m = MemberHistory(idx=i, registered_day=reg, tier=int(rng.integers(0, 4)))
        if rng.random() < 0.7:
            for _ in range(int(rng.poisson(1.6))):
                day = TODAY - int(rng.integers(0, HISTORY_DAYS))
                m.order_paid(day, int(rng.integers(1, 400)) * 100, set(), TODAY)
            if m.orders and rng.random() < 0.1:
                day, fen, _ = m.orders[-1]
                m.order_refunded(day, fen, bool(rng.random() < 0.5), TODAY)
        if rng.random() < 0.4:  # orders older than the history window
            old, old_day = int(rng.integers(1, 6)), TODAY - int(rng.integers(400, 1500))
            m.orders_total += old
            m.spend_total += old * int(rng.integers(10, 100)) * 100
            m.first_order_day = old_day if m.first_order_day < 0 else min(
                m.first_order_day, old_day)
            m.last_order_day = max(m.last_order_day, old_day)
        for cat in rng.choice(n_cats, size=min(int(rng.poisson(1.3)), n_cats), replace=False):
            count = 1 + int(rng.poisson(1.5))
            first = TODAY - int(rng.integers(0, 900))
            span = 0 if count == 1 or rng.random() < 0.15 else int(rng.integers(1, 300))
            m.categories[int(cat)] = [first, min(first + span, TODAY), count]
        for _ in range(int(rng.poisson(2.0)) if rng.random() < 0.6 else 0):
            m.interacted(TODAY - int(rng.integers(0, 120)), TODAY)
        members.append(m)
    return members


def frame_of_rows(rows: list[tuple]) -> FeatureFrame:
    return compute_features(assemble(rows), TODAY)


# -- statistics --

def test_code_tables_come_from_scores() -> None:
    assert pop.RFM_CLASSES is scores.RFM_CLASSES
    assert pop.QUADRANTS is scores.QUADRANTS


def test_quintile_table_of_distinct_values() -> None:
    assert pop.quintile_table(np.ones(10, np.int64)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert pop.quintile_table(np.ones(5, np.int64)).tolist() == [1, 2, 3, 4, 5]
    assert pop.quintile_table(hist_of([7]))[7] == 3
    assert pop.quintile_table(np.zeros(4, np.int64)).tolist() == [3, 3, 3, 3]  # nobody
    assert pop.quintile_table(np.ones(10, np.int64)).dtype == np.int8


def test_quintile_table_ties_share_a_score() -> None:
    assert pop.quintile_table(hist_of([5, 5, 5, 5]))[5] == 3
    # ranks 1..4 average 2.5 -> p = 0.5 -> 3; the single 2 has p = 0.9 -> 5
    t = pop.quintile_table(hist_of([1, 2, 1, 1, 1]))
    assert (t[1], t[2]) == (3, 5)
    # p exactly on a cut goes up: m = 10, value 1 tied at ranks 2..3 -> p = 0.2 -> 2
    t = pop.quintile_table(hist_of([0, 1, 1, 2, 3, 4, 5, 6, 7, 8]))
    assert t[:9].tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5]
    # a heavy tie at the bottom: 70% hold 0 (p = 0.35 -> 2), the rest spread above
    t = pop.quintile_table(hist_of([0] * 7 + [1, 2, 3]))
    assert t[:4].tolist() == [2, 4, 5, 5]


def ref_quintiles(values: list) -> list[int]:
    """Score by average rank among the values, in exact fractions."""
    m, s = len(values), sorted(values)
    out = []
    for v in values:
        avg = Fraction(bisect_left(s, v) + 1 + bisect_right(s, v), 2)
        p = (avg - Fraction(1, 2)) / m
        out.append(1 + sum(p >= Fraction(k, 5) for k in range(1, 5)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quintile_table_matches_rank_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size, count in ((3, 17), (30, 1000), (400, 1000), (5, 5)):
        values = rng.integers(0, size, count)
        table = pop.quintile_table(np.bincount(values, minlength=size))
        assert table[values].tolist() == ref_quintiles(values.tolist())


def test_median_of_a_histogram() -> None:
    assert pop.median(hist_of([1, 2, 3, 4])) == 2.5
    assert pop.median(hist_of([1, 2, 9])) == 2.0
    assert pop.median(hist_of([3])) == 3.0
    assert pop.median(np.zeros(5, np.int64)) == 0.0
    rng = np.random.default_rng(3)
    for count in (1, 2, 7, 100, 1001):
        values = rng.integers(0, 50, count)
        assert pop.median(np.bincount(values, minlength=50)) == float(np.median(values))


def test_money_bucket() -> None:
    b = pop.money_bucket(np.array([-500, 0, 1, 100, 10_000, 10_300, 11_000, 10**12]))
    assert b.tolist()[:3] == [0, 0, 0]
    assert b[4] == b[5] == 92 < b[6]  # 100 and 103 yuan tie (one ~5% step), 110 do not
    assert np.all(np.diff(b) >= 0) and b[-1] < pop.MONEY_BUCKETS
    assert b.dtype == np.int64


# -- RFM --

def eight_classes_population() -> list[dict]:
    """Member c-1 (c = 1..8) built to land in RFM class c; then one who never bought.
    Per dimension four buyers tie low and four tie high: scores 2 and 4, mean 3."""
    members = []
    for c in range(1, 9):
        m_low, r_low, f_low = (c - 1) >> 2 & 1, (c - 1) >> 1 & 1, (c - 1) & 1
        ago = 200 if r_low else 5
        count = 1 if f_low else 4
        fen = 1_000 if m_low else 100_000
        members.append({"orders": [(ago, fen // count)] * count})
    members.append({"reg": 100})
    return members


def test_rfm_all_eight_classes() -> None:
    frame, stats = stats_of(eight_classes_population())
    res = pop.rfm(frame, stats)
    assert res.rfm_class.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 0]
    assert res.buyers == stats.buyers == 8
    assert (res.r_mean, res.f_mean, res.m_mean) == (3.0, 3.0, 3.0)
    assert res.r.tolist() == [4, 4, 2, 2, 4, 4, 2, 2, 0]
    assert res.f.tolist() == [4, 2, 4, 2, 4, 2, 4, 2, 0]
    assert res.m.tolist() == [4, 4, 4, 4, 2, 2, 2, 2, 0]
    for col in (res.r, res.f, res.m, res.rfm_class):
        assert col.dtype == np.int8
    names = [pop.RFM_CLASSES[c][0] for c in res.rfm_class[:8].tolist()]
    assert names[0] == "important_value" and names[3] == "important_winback"


def test_rfm_quintiles_and_recency_direction() -> None:
    # ten buyers, one order each 10*i days ago worth (i+1) yuan: R falls, M rises
    frame, stats = stats_of([{"orders": [(10 * i, 100 * (i + 1))]} for i in range(10)])
    res = pop.rfm(frame, stats)
    assert res.r.tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert res.m.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert res.f.tolist() == [3] * 10  # everyone tied at one order
    # high R, F tied (high), low M -> general_value; low R, high M -> important_retention
    assert res.rfm_class[0] == scores.RFM_CLASS_CODE["general_value"]
    assert res.rfm_class[9] == scores.RFM_CLASS_CODE["important_retention"]


def test_rfm_never_bought_members_score_zero_and_do_not_count() -> None:
    buyers = [{"orders": [(i, 100 * i + 100)]} for i in range(5)]
    nobody = [{"reg": 3}, {"reg": 900, "acts": [1, 2]}]
    frame, stats = stats_of(buyers + nobody)
    alone_frame, alone_stats = stats_of(buyers)
    for name in ("recency", "frequency", "monetary"):
        assert np.array_equal(getattr(stats, name), getattr(alone_stats, name))
    with_extra, alone = pop.rfm(frame, stats), pop.rfm(alone_frame, alone_stats)
    for col in ("r", "f", "m", "rfm_class"):
        assert getattr(with_extra, col)[5:].tolist() == [0, 0]
        assert np.array_equal(getattr(with_extra, col)[:5], getattr(alone, col))
    empty_frame, empty = stats_of(nobody)
    res = pop.rfm(empty_frame, empty)
    assert empty.buyers == 0 and res.buyers == 0 and res.rfm_class.tolist() == [0, 0]


def test_rfm_against_stats_without_buyers_ties_at_three() -> None:
    frame = frame_of([{"orders": [(3, 100)]}, {}])
    res = pop.rfm(frame, pop.PopulationStats.empty())
    assert res.r.tolist() == [3, 0] and res.m.tolist() == [3, 0]
    assert res.rfm_class.tolist() == [scores.RFM_CLASS_CODE["important_value"], 0]


def test_rfm_lapsed_buyer_is_scored_lowest_on_window_frequency() -> None:
    members = [{"orders": [(5, 1000)] * 2}, {"orders": [(30, 5000)]},
               {"old": (9, 90_000, 500)}]  # nine orders, all before the 365-day window
    frame, stats = stats_of(members)
    res = pop.rfm(frame, stats)
    assert res.buyers == 3
    assert (res.r[2], res.f[2], res.m[2]) == (1, 1, 1)
    assert res.rfm_class[2] == scores.RFM_CLASS_CODE["general_winback"]


def test_rfm_high_means_at_or_above_the_population_mean_score() -> None:
    # F: nine buyers with one order (score 3) and one with five (score 5): mean 3.2,
    # so a 3 is *low* here, where a fixed cut at 3 would call everyone high.
    members = [{"orders": [(i, 500)]} for i in range(9)] + [{"orders": [(1, 100)] * 5}]
    frame, stats = stats_of(members)
    res = pop.rfm(frame, stats)
    assert res.f.tolist() == [3] * 9 + [5]
    assert res.f_mean == pytest.approx(3.2)
    f_low = (res.rfm_class.astype(int) - 1) & 1
    assert f_low.tolist() == [1] * 9 + [0]
    # F scores 1..5 (mean exactly 3): a score equal to the mean is high
    members = [{"orders": [(1, 500)] * k} for k in range(1, 6)]
    frame, stats = stats_of(members)
    res = pop.rfm(frame, stats)
    assert res.f.tolist() == [1, 2, 3, 4, 5] and res.f_mean == 3.0
    assert ((res.rfm_class.astype(int) - 1) & 1).tolist() == [1, 1, 0, 0, 0]


def ref_rfm(frame: FeatureFrame) -> tuple[list[int], list[int], list[int], list[int]]:
    """Rank-based RFM over the frame's buyers, member by member, in fractions."""
    c = frame.columns
    rows = [i for i in range(len(frame)) if c["orders_total"][i] > 0]
    bucket = pop.money_bucket(c["spend_365d"])
    keys = ([-int(c["days_since_last_order"][i]) for i in rows],
            [int(c["orders_365d"][i]) for i in rows], [int(bucket[i]) for i in rows])
    n = len(frame)
    out = [[0] * n for _ in range(4)]
    scored = [ref_quintiles(k) for k in keys]
    means = [Fraction(sum(s), len(s)) for s in scored]
    for j, i in enumerate(rows):
        r, f, m = (scored[d][j] for d in range(3))
        out[0][i], out[1][i], out[2][i] = r, f, m
        for code, bits in {1: (1, 1, 1), 2: (1, 0, 1), 3: (0, 1, 1), 4: (0, 0, 1),
                           5: (1, 1, 0), 6: (1, 0, 0), 7: (0, 1, 0), 8: (0, 0, 0)}.items():
            if bits == (r >= means[0], f >= means[1], m >= means[2]):
                out[3][i] = code
    return out[0], out[1], out[2], out[3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rfm_matches_rank_reference_on_random_population(seed: int) -> None:
    frame = compute_features(random_history(10_000, seed=seed), TODAY)
    res = pop.rfm(frame, pop.PopulationStats.of(frame))
    r, f, m, cls = ref_rfm(frame)
    assert res.r.tolist() == r
    assert res.f.tolist() == f
    assert res.m.tolist() == m
    assert res.rfm_class.tolist() == cls
    assert set(cls) == set(range(9))
    assert res.buyers == int((frame.columns["orders_total"] > 0).sum())


# -- value quadrant --

def test_value_quadrant_medians() -> None:
    members = [
        {"orders": [(1, 100)], "acts": [1]},  # f 1, i 1
        {"orders": [(1, 100)] * 2, "acts": [1] * 4},  # f 2, i 4
        {"orders": [(1, 100)] * 3},  # f 3, i 0
        {"orders": [(1, 100)] * 5, "acts": [1] * 6},  # f 5, i 6
        {"acts": [1] * 9},  # never bought, i 9
        {},  # nothing at all
        {"old": (4, 400, 500), "acts": [200]},  # bought long ago, interaction too old
    ]
    frame, stats = stats_of(members)
    t = pop.quadrant_thresholds(stats)
    assert t == pop.QuadrantThresholds(frequency=2.5, interaction=5.0)  # medians 2.5 and 5
    q = pop.value_quadrant(frame, stats)
    assert q.dtype == np.int8
    assert q.tolist() == [4, 4, 2, 1, 3, 4, 4]
    assert pop.value_quadrant(frame, t).tolist() == q.tolist()
    fixed = pop.QuadrantThresholds(1, 1)
    assert pop.value_quadrant(frame, fixed).tolist() == [1, 1, 2, 1, 3, 4, 4]


def test_value_quadrant_thresholds_never_below_one() -> None:
    frame, stats = stats_of([{"orders": [(1, 100)], "acts": [3]}, {"orders": [(2, 100)]}, {}])
    assert pop.quadrant_thresholds(stats) == pop.QuadrantThresholds(1.0, 1.0)
    assert pop.value_quadrant(frame, stats).tolist() == [1, 2, 4]
    nobody, empty = stats_of([{}, {"reg": 1}])
    assert pop.quadrant_thresholds(empty) == pop.QuadrantThresholds(1.0, 1.0)
    assert pop.value_quadrant(nobody, empty).tolist() == [4, 4]


def test_value_quadrant_matches_reference_on_random_population() -> None:
    frame = compute_features(random_history(10_000, seed=5), TODAY)
    o = frame.columns["orders_365d"].tolist()
    a = frame.columns["interactions_90d"].tolist()
    fcut = max(1.0, float(np.median([x for x in o if x >= 1])))
    icut = max(1.0, float(np.median([x for x in a if x >= 1])))
    stats = pop.PopulationStats.of(frame)
    assert pop.quadrant_thresholds(stats) == pop.QuadrantThresholds(fcut, icut)
    ref = [1 + 2 * (x < fcut) + (y < icut) for x, y in zip(o, a, strict=True)]
    assert pop.value_quadrant(frame, stats).tolist() == ref
    assert set(ref) == {1, 2, 3, 4}


# -- learned cycles --

def cycle_population() -> list[dict]:
    # category 7: mean gaps 10, 20, 30, 40 (-> median 25); category 8: gaps 5 and 15
    return [
        {"cats": [(7, 30, 20, 2), (8, 40, 30, 3)]},  # gap 10 / gap 5
        {"cats": [(7, 80, 20, 4)]},  # gap 20
        {"cats": [(7, 90, 0, 4), (8, 45, 30, 2)]},  # gap 30 / gap 15
        {"cats": [(7, 100, 60, 2)]},  # gap 40
        {"cats": [(7, 5, 5, 1)]},  # one purchase: no gap
        {"cats": [(7, 3, 3, 3), (9, 50, 10, 5)]},  # same-day purchases: no interval
        {},
    ]


def test_learned_cycles_median_and_min_members() -> None:
    _, stats = stats_of(cycle_population())
    assert pop.learned_cycles(stats, min_members=1) == {7: 25.0, 8: 10.0, 9: 10.0}
    assert pop.learned_cycles(stats, min_members=2) == {7: 25.0, 8: 10.0}
    assert pop.learned_cycles(stats, min_members=4) == {7: 25.0}
    assert pop.learned_cycles(stats, min_members=5) == {}
    assert pop.learned_cycles(stats) == {}  # default needs 20 members
    _, odd = stats_of(cycle_population()[:3])  # category 7 gaps 10, 20, 30
    assert pop.learned_cycles(odd, min_members=3) == {7: 20.0}
    with pytest.raises(ValueError):
        pop.learned_cycles(stats, min_members=0)


def test_learned_cycles_leave_out_same_day_members() -> None:
    # two members with a 30-day gap; five who bought twice, both on one day
    same_day = [{"cats": [(4, 10, 10, 2)]}] * 5
    _, stats = stats_of([{"cats": [(4, 60, 30, 2)]}, {"cats": [(4, 70, 40, 2)]}, *same_day])
    assert int(stats.gaps[4].sum()) == 2
    assert pop.learned_cycles(stats, min_members=2) == {4: 30.0}
    _, only_same_day = stats_of(same_day)
    assert only_same_day.gaps == {}


def test_mean_gaps_round_half_up_to_at_least_one_day() -> None:
    first = np.array([0, 0, 0, 0, 0, 0])
    last = np.array([5, 7, 1, 9, 10, 2000])
    count = np.array([3, 3, 4, 7, 2, 2])
    # 2.5 -> 3 and 3.5 -> 4 (half up, not to even), 1/3 -> 1 (at least a day), 1.5 -> 2
    assert pop.mean_gap_days(first, last, count).tolist() == [3, 4, 1, 2, 10, 2000]
    members = [{"cats": [(1, 10, 10 - s, c)]} for s, c in zip(last, count, strict=True)]
    _, stats = stats_of(members)
    assert np.flatnonzero(stats.gaps[1]).tolist() == [1, 2, 3, 4, 10, pop.MAX_GAP - 1]
    # median of an even count is the mean of the two middle gaps: (3 + 4) / 2
    assert pop.learned_cycles(stats, min_members=1) == {1: 3.5}


def test_learned_cycles_match_reference_on_random_population() -> None:
    frame = compute_features(random_history(10_000, seed=4), TODAY)
    learned = pop.learned_cycles(pop.PopulationStats.of(frame))
    assert len(learned) == 40
    gaps: dict[int, list[int]] = {}
    for cid, f, la, cnt in zip(frame.cat_id.tolist(), frame.cat_first_day.tolist(),
                               frame.cat_last_day.tolist(), frame.cat_count.tolist(),
                               strict=True):
        if cnt >= 2 and la > f:
            gap = Fraction(la - f, cnt - 1)
            gaps.setdefault(cid, []).append(max(1, int(gap + Fraction(1, 2))))
    assert learned == {k: float(np.median(v)) for k, v in gaps.items()}


# -- statistics: serialising and merging --

def test_stats_round_trip_through_bytes() -> None:
    frame = compute_features(random_history(3000, seed=6), TODAY)
    stats = pop.PopulationStats.of(frame)
    back = pop.PopulationStats.from_bytes(stats.to_bytes())
    assert back.same_as(stats) and stats.same_as(back)
    assert sorted(back.gaps) == sorted(stats.gaps) and len(back.gaps) == 40
    for name in ("recency", "frequency", "monetary", "interactions"):
        assert getattr(back, name).dtype == np.int64
    empty = pop.PopulationStats.from_bytes(pop.PopulationStats.empty().to_bytes())
    assert empty.same_as(pop.PopulationStats.empty()) and empty.buyers == 0
    assert not back.same_as(empty)


def test_stats_of_a_different_layout_are_refused() -> None:
    bad = pop.PopulationStats.empty()
    bad.recency = np.zeros(10, np.int64)
    with pytest.raises(ValueError):
        pop.PopulationStats.from_bytes(bad.to_bytes())
    with pytest.raises(ValueError):
        pop.PopulationStats.merge([bad])


def test_merge_is_order_free_and_leaves_parts_alone() -> None:
    frames = [compute_features(random_history(500, seed=s), TODAY) for s in (1, 2, 3)]
    parts = [pop.PopulationStats.of(f) for f in frames]
    copies = [pop.PopulationStats.from_bytes(p.to_bytes()) for p in parts]
    merged = pop.PopulationStats.merge(parts)
    assert merged.same_as(pop.PopulationStats.merge(parts[::-1]))
    assert merged.buyers == sum(p.buyers for p in parts)
    assert all(p.same_as(c) for p, c in zip(parts, copies, strict=True))
    assert pop.PopulationStats.merge([]).same_as(pop.PopulationStats.empty())
    assert pop.PopulationStats.merge([parts[0]]).same_as(parts[0])


# -- partitions --

def test_random_members_cover_the_cases() -> None:
    members = random_members(2000, seed=0)
    frame = frame_of_rows([m.to_row() for m in members])
    c = frame.columns
    buyer = c["orders_total"] > 0
    assert (buyer & (c["orders_365d"] == 0)).any()  # lapsed buyers
    assert (c["days_since_registered"] == 100_000).any()  # unknown registration
    same_day = (frame.cat_count >= 2) & (frame.cat_last_day == frame.cat_first_day)
    assert same_day.any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partitions_score_exactly_like_the_whole(seed: int) -> None:
    members = random_members(5000, seed=seed)
    rows = [m.to_row() for m in members]
    whole = frame_of_rows(rows)
    whole_stats = pop.PopulationStats.of(whole)
    whole_rfm = pop.rfm(whole, whole_stats)
    whole_quadrant = pop.value_quadrant(whole, whole_stats)
    whole_cycles = {k: pop.learned_cycles(whole_stats, k) for k in (1, 20)}
    assert set(whole_rfm.rfm_class.tolist()) == set(range(9))
    assert set(whole_quadrant.tolist()) == {1, 2, 3, 4}
    assert len(whole_cycles[20]) == 12
    for n in (2, 3):
        frames = [frame_of_rows([r for r in rows if r[0] % n == p]) for p in range(n)]
        assert sum(len(f) for f in frames) == len(whole)
        # each process ships its statistics as bytes; the merge comes back as bytes
        blobs = [pop.PopulationStats.of(f).to_bytes() for f in frames]
        merged = pop.PopulationStats.merge([pop.PopulationStats.from_bytes(b) for b in blobs])
        merged = pop.PopulationStats.from_bytes(merged.to_bytes())
        assert merged.same_as(whole_stats)
        assert {k: pop.learned_cycles(merged, k) for k in (1, 20)} == whole_cycles
        assert pop.quadrant_thresholds(merged) == pop.quadrant_thresholds(whole_stats)
        for p, frame in enumerate(frames):
            sel = np.arange(len(whole)) % n == p
            assert np.array_equal(frame.idx, whole.idx[sel])
            res = pop.rfm(frame, merged)
            for col in ("r", "f", "m", "rfm_class"):
                assert np.array_equal(getattr(res, col), getattr(whole_rfm, col)[sel]), col
            assert (res.r_mean, res.f_mean, res.m_mean, res.buyers) == (
                whole_rfm.r_mean, whole_rfm.f_mean, whole_rfm.m_mean, whole_rfm.buyers)
            assert np.array_equal(pop.value_quadrant(frame, merged), whole_quadrant[sel])


def test_one_member_scores_against_the_population_like_in_it() -> None:
    members = random_members(1000, seed=7)
    rows = [m.to_row() for m in members]
    whole = frame_of_rows(rows)
    stats = pop.PopulationStats.of(whole)
    whole_rfm = pop.rfm(whole, stats)
    for i in (0, 1, 17, 500, 999):
        one = frame_of_rows([rows[i]])
        assert pop.rfm(one, stats).rfm_class.tolist() == [whole_rfm.rfm_class[i]]
        assert pop.value_quadrant(one, stats).tolist() == [
            pop.value_quadrant(whole, stats)[i]]
