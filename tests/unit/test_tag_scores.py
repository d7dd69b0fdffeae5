"""Per-member scored tags (services/tagging/domain/scores.py): lifecycle, repurchase
due, and the code tables. Hand-built frames with known answers, and seeded random
populations checked against plain-Python references. The population-relative scores
are tested in test_tag_population.py, which reuses the builders here."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tagging.domain import scores as sc
from services.tagging.domain.features import (
    HISTORY_DAYS,
    NEVER,
    NEVER_DAYS,
    FeatureFrame,
    History,
    compute_features,
)

TODAY = 20_000


# -- building histories --

def history(members: list[dict]) -> History:
    """One dict per member, keys (all optional):
    reg: days ago registered (default 500; None: unknown);
    orders: [(days_ago, fen)] within HISTORY_DAYS;
    old: (count, fen, days_ago_of_last) orders older than the history window;
    cats: [(cat_id, first_days_ago, last_days_ago, count)];
    acts: [days_ago] interactions."""
    n = len(members)
    ord_off, ord_day, ord_fen = [0], [], []
    cat_off, cat_id, cat_first, cat_last, cat_count = [0], [], [], [], []
    act_off, act_day = [0], []
    reg, total, spend, first, last = [], [], [], [], []
    for m in members:
        reg.append(NEVER if m.get("reg", 500) is None else TODAY - m.get("reg", 500))
        orders = m.get("orders", [])
        old_count, old_fen, old_ago = m.get("old", (0, 0, 0))
        days = [TODAY - ago for ago, _ in orders]
        ord_day += days
        ord_fen += [fen for _, fen in orders]
        ord_off.append(len(ord_day))
        total.append(len(orders) + old_count)
        spend.append(sum(fen for _, fen in orders) + old_fen)
        all_days = days + ([TODAY - old_ago] if old_count else [])
        first.append(min(all_days) if all_days else NEVER)
        last.append(max(all_days) if all_days else NEVER)
        for cid, f_ago, l_ago, count in m.get("cats", []):
            cat_id.append(cid)
            cat_first.append(TODAY - f_ago)
            cat_last.append(TODAY - l_ago)
            cat_count.append(count)
        cat_off.append(len(cat_id))
        act_day += [TODAY - ago for ago in m.get("acts", [])]
        act_off.append(len(act_day))
    i32, i64 = np.int32, np.int64
    return History(
        idx=np.arange(n, dtype=np.uint32), registered_day=np.array(reg, i32),
        tier=np.zeros(n, np.int8), points_balance=np.zeros(n, i64),
        orders_total=np.array(total, i64), spend_total=np.array(spend, i64),
        first_order_day=np.array(first, i32), last_order_day=np.array(last, i32),
        ord_offsets=np.array(ord_off, i64), ord_day=np.array(ord_day, i32),
        ord_fen=np.array(ord_fen, i64), cat_offsets=np.array(cat_off, i64),
        cat_id=np.array(cat_id, i32), cat_first_day=np.array(cat_first, i32),
        cat_last_day=np.array(cat_last, i32), cat_count=np.array(cat_count, i32),
        act_offsets=np.array(act_off, i64), act_day=np.array(act_day, i32))


def frame_of(members: list[dict]) -> FeatureFrame:
    return compute_features(history(members), TODAY)


def random_history(n: int, today: int = TODAY, seed: int = 0, n_cats: int = 40) -> History:
    """A seeded random population, built vectorised (usable at 1M members)."""
    rng = np.random.default_rng(seed)
    i32, i64 = np.int32, np.int64
    registered = (today - rng.integers(0, 1500, n)).astype(i32)
    n_ord = rng.poisson(1.5, n) * (rng.random(n) < 0.7)
    ord_off = np.concatenate([[0], np.cumsum(n_ord)]).astype(i64)
    ord_day = (today - rng.integers(0, HISTORY_DAYS, ord_off[-1])).astype(i32)
    ord_fen = (rng.integers(1, 500, ord_off[-1]) * 100).astype(i64)  # many ties
    owner = np.repeat(np.arange(n), n_ord)
    old = rng.poisson(0.8, n) * (rng.random(n) < 0.5)
    old_last = (today - rng.integers(HISTORY_DAYS, 1200, n)).astype(i32)
    orders_total = (n_ord + old).astype(i64)
    spend_total = (np.bincount(owner, weights=ord_fen, minlength=n) + old * 5000).astype(i64)
    has = n_ord > 0
    last = np.full(n, NEVER, i32)
    first = np.full(n, NEVER, i32)
    if has.any():
        starts = ord_off[:-1][has]
        last[has] = np.maximum.reduceat(ord_day, starts)
        first[has] = np.minimum.reduceat(ord_day, starts)
    last = np.where(~has & (old > 0), old_last, last).astype(i32)
    first = np.where(old > 0, old_last - 30, first).astype(i32)
    k = np.minimum(rng.poisson(1.2, n), n_cats)
    cat_off = np.concatenate([[0], np.cumsum(k)]).astype(i64)
    e = int(cat_off[-1])
    j = np.arange(e) - np.repeat(cat_off[:-1], k)
    cat_id = ((np.repeat(rng.integers(0, n_cats, n), k) + j) % n_cats).astype(i32)
    cat_count = (1 + rng.poisson(1.5, e)).astype(i32)
    cat_first = (today - rng.integers(0, 400, e)).astype(i32)
    span = rng.integers(0, 200, e) * (cat_count > 1)
    cat_last = np.minimum(cat_first + span, today).astype(i32)
    a = rng.poisson(2.0, n) * (rng.random(n) < 0.6)
    act_off = np.concatenate([[0], np.cumsum(a)]).astype(i64)
    act_day = (today - rng.integers(0, 120, act_off[-1])).astype(i32)
    return History(
        idx=np.arange(n, dtype=np.uint32), registered_day=registered,
        tier=rng.integers(0, 4, n).astype(np.int8), points_balance=np.zeros(n, i64),
        orders_total=orders_total, spend_total=spend_total, first_order_day=first,
        last_order_day=last, ord_offsets=ord_off, ord_day=ord_day, ord_fen=ord_fen,
        cat_offsets=cat_off, cat_id=cat_id, cat_first_day=cat_first, cat_last_day=cat_last,
        cat_count=cat_count, act_offsets=act_off, act_day=act_day)


# -- code tables --

def test_code_tables_are_stable() -> None:
    assert sc.RFM_CLASSES[1] == ("important_value", "重要价值")
    assert sc.RFM_CLASSES[8] == ("general_winback", "一般挽留")
    assert sorted(sc.RFM_CLASSES) == list(range(1, 9))
    assert sc.LIFECYCLE == {1: ("new", "新客"), 2: ("active", "活跃"), 3: ("sleeping", "沉睡"),
                            4: ("churned", "流失"), 5: ("prospect", "未购")}
    assert sc.QUADRANTS[1][0] == "high_freq_high_interaction"
    assert sc.QUADRANTS[4] == ("low_freq_low_interaction", "低频低互动")
    assert sc.RFM_CLASS_CODE["important_winback"] == 4
    assert sc.LIFECYCLE_CODE["prospect"] == 5
    assert sc.QUADRANT_CODE["low_freq_high_interaction"] == 3


# -- lifecycle --

def test_lifecycle_boundaries_at_exact_thresholds() -> None:
    members = [
        {"reg": 29},  # new, never bought
        {"reg": 10, "orders": [(1, 100)]},  # new even though bought
        {"reg": 30},  # registered exactly new_days ago: prospect
        {"reg": 400, "orders": [(0, 100)]},  # active
        {"reg": 400, "orders": [(89, 100)]},  # active
        {"reg": 400, "orders": [(90, 100)]},  # sleeping
        {"reg": 400, "orders": [(179, 100)]},  # sleeping
        {"reg": 400, "orders": [(180, 100)]},  # churned
        {"reg": 2000, "old": (3, 900, 700)},  # churned: last order before the history
        {"reg": 30, "orders": [(29, 100)]},  # past new_days, bought 29 days ago: active
    ]
    frame = frame_of(members)
    got = sc.lifecycle(frame)
    assert got.dtype == np.int8
    assert got.tolist() == [1, 1, 5, 2, 2, 3, 3, 4, 4, 2]
    # per-member: the scalar rule agrees with the frame, member by member
    c = frame.columns
    for i in range(len(frame)):
        one = sc.lifecycle_of(int(c["days_since_registered"][i]), int(c["orders_total"][i]),
                              int(c["days_since_last_order"][i]),
                              days_since_first_order=int(c["days_since_first_order"][i]))
        assert int(one) == got[i]


def test_lifecycle_unknown_registration_counts_from_the_first_order() -> None:
    frame = frame_of([{"reg": None}, {"reg": None, "orders": [(3, 100)]},
                      {"reg": None, "orders": [(200, 100)]},
                      {"reg": None, "orders": [(60, 100)]}])
    assert frame.columns["days_since_registered"].tolist() == [NEVER_DAYS] * 4
    # Nothing known: never new; else the first order is the first known activity.
    assert sc.lifecycle(frame).tolist() == [5, 1, 4, 2]
    assert int(sc.lifecycle_of(NEVER_DAYS, 0, NEVER_DAYS)) == sc.LIFECYCLE_CODE["prospect"]


def test_lifecycle_of_imported_history_counts_from_the_first_known_activity() -> None:
    members = [
        {"reg": 0, "old": (1, 100, 500)},  # registered today, only order 500 days ago
        {"reg": 0, "orders": [(100, 100)]},  # registered today, bought 100 days ago
        {"reg": 0, "orders": [(20, 100), (5, 100)]},  # first order 20 days ago: new
        {"reg": 500, "orders": [(0, 100)]},  # long registered, first order today: active
        {"reg": 0},  # registered today, never bought: new
    ]
    frame = frame_of(members)
    assert sc.lifecycle(frame).tolist() == [
        sc.LIFECYCLE_CODE[k] for k in ("churned", "sleeping", "new", "active", "new")
    ]
    code = sc.lifecycle_of(0, 1, 500, days_since_first_order=500)
    assert int(code) == sc.LIFECYCLE_CODE["churned"]
    assert int(sc.lifecycle_of(0, 1, 500)) == sc.LIFECYCLE_CODE["new"]  # registration only


def test_lifecycle_custom_thresholds() -> None:
    t = sc.LifecycleThresholds(new_days=7, active_days=30, sleeping_days=60)
    frame = frame_of([{"reg": 7}, {"reg": 6}, {"reg": 100, "orders": [(29, 1)]},
                      {"reg": 100, "orders": [(30, 1)]}, {"reg": 100, "orders": [(60, 1)]}])
    assert sc.lifecycle(frame, t).tolist() == [5, 1, 2, 3, 4]
    no_new = sc.LifecycleThresholds(new_days=0)
    assert sc.lifecycle(frame_of([{"reg": 0}]), no_new).tolist() == [5]
    same = sc.LifecycleThresholds(active_days=90, sleeping_days=90)  # no sleeping stage
    assert sc.lifecycle(frame_of([{"orders": [(90, 1)]}]), same).tolist() == [4]


@pytest.mark.parametrize("kwargs", [{"new_days": -1}, {"active_days": 0},
                                    {"active_days": 100, "sleeping_days": 99}])
def test_lifecycle_thresholds_validate(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sc.LifecycleThresholds(**kwargs)


def test_lifecycle_matches_reference_on_random_population() -> None:
    frame = compute_features(random_history(10_000, seed=3), TODAY)
    c = frame.columns
    ref = []
    for reg, total, first, last in zip(c["days_since_registered"].tolist(),
                                       c["orders_total"].tolist(),
                                       c["days_since_first_order"].tolist(),
                                       c["days_since_last_order"].tolist(), strict=True):
        known = [d for d in (reg, first) if d < NEVER_DAYS]
        first_seen = max(known) if known else NEVER_DAYS
        ref.append(1 if first_seen < 30 else 5 if total == 0 else 2 if last < 90
                   else 3 if last < 180 else 4)
    assert sc.lifecycle(frame).tolist() == ref
    assert set(ref) == {1, 2, 3, 4, 5}


# -- repurchase due --

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


def test_configured_cycles_override_learned() -> None:
    learned = {7: 25.0, 8: 10.0}
    assert sc.effective_cycles({8: 14.0, 11: 30.0}, learned) == {7: 25.0, 8: 14.0, 11: 30.0}
    assert sc.effective_cycles({}, learned) == learned
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            sc.effective_cycles({8: bad}, learned)


def test_repurchase_due_dates() -> None:
    frame = frame_of(cycle_population())
    cycles = sc.effective_cycles({8: 30.0}, {7: 25.0, 8: 10.0})  # learned, then configured
    assert cycles == {7: 25.0, 8: 30.0}
    due = sc.repurchase_due(frame, cycles)
    # entries in CSR order: (0,7) (0,8) (1,7) (2,7) (2,8) (3,7) (4,7) (5,7) (5,9)
    assert due.row.tolist() == [0, 0, 1, 2, 2, 3, 4, 5, 5]
    assert due.known.tolist() == [True] * 8 + [False]
    assert due.cycle_days.tolist() == [25, 30, 25, 25, 30, 25, 25, 25, 0]
    last_ago = [20, 30, 20, 0, 30, 60, 5, 3]
    assert due.due_day.tolist() == [TODAY - a + c for a, c in
                                    zip(last_ago, [25, 30, 25, 25, 30, 25, 25, 25],
                                        strict=True)] + [NEVER]
    # due exactly on due_day (member 2, category 8: last 30 days ago, cycle 30)
    assert due.is_due.tolist() == [False, True, False, False, True, True, False, False, False]
    assert due.due_mask(7).tolist() == [False, False, False, True, False, False, False]
    assert due.due_mask(8).tolist() == [True, False, True, False, False, False, False]
    assert not due.due_mask(9).any() and not due.due_mask(123).any()
    by_cat = due.due_rows_by_category()
    assert {k: v.tolist() for k, v in by_cat.items()} == {7: [3], 8: [0, 2]}
    # one day earlier nobody with cycle 30 / last 30 days ago is due yet
    earlier = sc.repurchase_due(compute_features(history(cycle_population()), TODAY - 1),
                                cycles)
    assert earlier.due_day.tolist() == due.due_day.tolist()
    assert not earlier.is_due[4]


def test_repurchase_due_rounding_and_edge_cases() -> None:
    frame = frame_of([{"cats": [(1, 10, 10, 1), (2, 10, 10, 1), (3, 10, 10, 1)]}])
    due = sc.repurchase_due(frame, {1: 2.5, 2: 0.3, 3: 9.49})
    assert due.cycle_days.tolist() == [3, 1, 9]  # half up, at least one day
    assert due.is_due.tolist() == [True, True, True]
    none = sc.repurchase_due(frame, {})
    assert not none.known.any() and none.due_day.tolist() == [NEVER] * 3
    assert none.due_rows_by_category() == {}
    empty = sc.repurchase_due(frame_of([{}, {}]), {1: 5.0})
    assert len(empty.is_due) == 0 and empty.due_mask(1).tolist() == [False, False]
    with pytest.raises(ValueError):
        sc.repurchase_due(frame, {1: 0.0})


def test_repurchase_matches_reference_on_random_population() -> None:
    frame = compute_features(random_history(10_000, seed=4), TODAY)
    learned = {c: 20 + 1.5 * c for c in range(1, 39)}  # half days round up
    cycles = sc.effective_cycles({0: 7.0}, learned)
    due = sc.repurchase_due(frame, cycles)
    offsets = frame.cat_offsets.tolist()
    for cid in (0, 5, 39):
        want = np.zeros(len(frame), bool)
        for i in range(len(frame)):
            for e in range(offsets[i], offsets[i + 1]):
                if frame.cat_id[e] == cid and cid in cycles:
                    days = max(1, int(np.floor(cycles[cid] + 0.5)))
                    want[i] |= TODAY >= frame.cat_last_day[e] + days
        assert np.array_equal(due.due_mask(cid), want)
        got = due.due_rows_by_category().get(cid, np.zeros(0, np.int64))
        assert got.tolist() == np.flatnonzero(want).tolist()
    assert want.sum() == 0 and 39 not in due.due_rows_by_category()  # no cycle for 39


def test_random_history_is_consistent() -> None:
    h = random_history(2000, seed=9)
    frame = compute_features(h, TODAY)
    c = frame.columns
    bought = c["orders_total"] > 0
    assert np.array_equal(bought, c["days_since_last_order"] < NEVER_DAYS)
    assert (c["orders_365d"] <= c["orders_total"]).all()


DAYS = st.one_of(st.integers(0, 800), st.just(NEVER_DAYS))


@settings(max_examples=300)
@given(st.lists(st.tuples(DAYS, DAYS, DAYS, st.booleans()), min_size=1, max_size=40))
def test_the_benchs_hand_written_lifecycle_is_the_engines(rows) -> None:
    """`make bench` checks the engine's tags against bench/tagging/kernel.py's
    hand-written step; its lifecycle must be the engine's rule on every input (it once
    missed an imported member's earlier first order: 17 members differed in 1,000,000)."""
    from bench.tagging.kernel import lifecycle_stage

    reg, first, last, buyer = (np.array(col) for col in zip(*rows, strict=True))
    expected = sc.lifecycle_of(reg, buyer.astype(int), last, sc.DEFAULT_LIFECYCLE, first)
    assert lifecycle_stage(reg, first, last, buyer, sc.DEFAULT_LIFECYCLE).tolist() == (
        expected.tolist())
