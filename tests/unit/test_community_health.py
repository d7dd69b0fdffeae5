"""Dead-group diagnosis by phase, activity scores and a column's weekday effect."""

from __future__ import annotations

from datetime import date, timedelta

from services.community.domain.health import (
    DayActivity,
    Phase,
    activity_score,
    diagnose,
    weekday_effect,
)

START = date(2026, 11, 1)


def _days(count: int, **per_day: int) -> list[DayActivity]:
    return [DayActivity(START + timedelta(d), **per_day) for d in range(count)]


def test_too_new_to_judge():
    assert diagnose(_days(2), 100, START, START + timedelta(1)).phase is Phase.TOO_NEW


def test_silent_first_days_mean_wrong_traffic():
    days = _days(5, messages=3, speakers=2)  # 2 of 150 members ever speak
    d = diagnose(days, 150, START, START + timedelta(4))
    assert d.phase is Phase.WRONG_TRAFFIC
    assert d.evidence["peak_speaker_share"] < 0.1 and "routing rule" in d.suggestion


def test_lively_first_days_are_healthy():
    days = _days(5, messages=200, speakers=40)
    assert diagnose(days, 150, START, START + timedelta(4)).phase is Phase.HEALTHY


def test_topics_dry_up_after_ten_days():
    days = _days(7, messages=300, speakers=50) + [
        DayActivity(START + timedelta(d), messages=20, speakers=5, orders=1) for d in range(7, 14)
    ]
    d = diagnose(days, 150, START, START + timedelta(13))
    assert d.phase is Phase.TOPICS_DRIED_UP
    assert d.evidence["last_5_days_daily_activity"] < 0.3 * d.evidence["first_week_daily_activity"]


def test_a_month_without_transactions_is_no_value():
    days = _days(40, messages=200, speakers=40)
    d = diagnose(days, 150, START, START + timedelta(39))
    assert d.phase is Phase.NO_VALUE and d.evidence["transactions_30d"] == 0
    with_orders = _days(40, messages=200, speakers=40, orders=2)
    assert diagnose(with_orders, 150, START, START + timedelta(39)).phase is Phase.HEALTHY


def test_scores_rank_busier_groups_higher_and_stay_in_range():
    today = START + timedelta(29)
    quiet = activity_score(_days(30, messages=10), 200, today, 7)
    busy = activity_score(_days(30, messages=400, check_ins=50), 200, today, 7)
    flood = activity_score(_days(30, messages=10**7), 200, today, 30)
    assert 0 <= quiet < busy <= flood == 100.0
    assert activity_score([], 200, today, 30) == 0


def test_weekday_effect_compares_post_days_with_the_same_weekday():
    days = [DayActivity(START + timedelta(d), messages=10) for d in range(28)]
    tuesdays = [d.day for d in days if d.day.weekday() == 1]
    boosted = [DayActivity(d.day, messages=30) if d.day in tuesdays[:2] else d for d in days]
    effect = weekday_effect(boosted, tuesdays[:2])
    assert effect[1] == 3.0
    assert effect[0] is None  # no Monday post to compare
