"""Graduation's pool plan (the dry run's placement: fill order, capacity never
exceeded, overflow numbered on), pooled column effects, column targets and parsing."""

from __future__ import annotations

from datetime import date, time, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.community.domain import columns as dcol
from services.community.domain.graduation import PoolPlan, first_level_groups, is_graduation_target
from services.community.domain.health import DayActivity, filled, pooled_weekday_effect
from services.community.domain.routing import BALANCE, FILL_FIRST


def rule(fill: int, template_capacity: int | None = 2, last: int = 0) -> dict:
    template = None if template_capacity is None else {"capacity": template_capacity}
    return {"_id": "koc", "fill_strategy": fill, "template": template, "last_sequence": last}


def group(seq: int, members: int, capacity: int) -> dict:
    return {"_id": f"koc-{seq}", "member_count": members, "capacity": capacity,
            "sequence": seq}


def test_fill_first_fills_in_order_then_opens_the_next_numbers():
    plan = PoolPlan(rule(FILL_FIRST, 2, last=2), [group(1, 1, 2), group(2, 0, 2)])
    placed = [plan.place(f"m{i}") for i in range(5)]
    assert [(p.group_id, p.opens_group) for p in placed] == [
        ("koc-1", False), ("koc-2", False), ("koc-2", False), ("koc-3", True),
        ("koc-3", False)]


def test_balance_takes_the_fewest_members_and_no_template_means_full():
    plan = PoolPlan(rule(BALANCE, None), [group(1, 3, 5), group(2, 1, 5), group(3, 1, 2)])
    assert [plan.place(f"m{i}").group_id for i in range(4)] == [
        "koc-2", "koc-3", "koc-2", "koc-1"]
    full = PoolPlan(rule(FILL_FIRST, None), [group(1, 2, 2)])
    assert full.next_group() is None and full.place("m").group_id == ""


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 5)), max_size=6),
       st.integers(1, 4), st.integers(0, 30), st.sampled_from([FILL_FIRST, BALANCE]))
def test_a_plan_never_exceeds_a_capacity(groups, template_capacity, members, fill):
    seats = [group(i + 1, min(m, c), c) for i, (m, c) in enumerate(groups)]
    plan = PoolPlan(rule(fill, template_capacity, last=len(seats)), seats)
    counts = {g["_id"]: g["member_count"] for g in seats}
    capacity = {g["_id"]: g["capacity"] for g in seats}
    for i in range(members):
        p = plan.place(f"m{i}")
        counts[p.group_id] = counts.get(p.group_id, 0) + 1
        capacity.setdefault(p.group_id, template_capacity)
    assert all(counts[g] <= capacity[g] for g in counts)


def test_graduation_targets_and_first_level_groups():
    assert is_graduation_target(kind=8, level=1) and is_graduation_target(kind=1, level=2)
    assert not is_graduation_target(kind=1, level=1)
    groups = [{"_id": "a", "state": "active", "level": 1, "pool_id": ""},
              {"_id": "b", "state": "archived", "level": 1, "pool_id": ""},
              {"_id": "c", "state": "active", "level": 2, "pool_id": ""},
              {"_id": "d", "state": "active", "level": 1, "pool_id": "koc"}]
    assert first_level_groups(groups, "koc") == ["a"]


def test_a_pooled_weekday_effect_compares_posted_days_with_the_rest():
    monday = date(2026, 3, 2)
    days = filled([DayActivity(monday, messages=10), DayActivity(monday + timedelta(7),
                                                                 messages=2)],
                  monday, monday + timedelta(13))
    effect = pooled_weekday_effect([(days, {monday}), (days, {monday})])
    assert (effect[0].ratio, effect[0].posted_days, effect[0].other_days) == (5.0, 2, 2)
    assert effect[1].ratio is None and effect[1].other_days == 4


def test_column_targets_and_times():
    active = {"_id": "g", "state": "active", "kind": 7, "store_id": "s1", "city": "上海"}
    assert dcol.targets_group({"group_id": "g"}, active)
    assert dcol.targets_group({"kind": 7, "store_id": "s1"}, active)
    assert not dcol.targets_group({"kind": 7, "city": "杭州"}, active)
    assert not dcol.targets_group({"kind": 7}, {**active, "state": "archived"})
    assert dcol.parse_at("08:30") == time(8, 30)
    assert dcol.parse_at("8:30") is None and dcol.parse_at("25:00") is None
    assert dcol.parse_day("2026-02-30") is None
