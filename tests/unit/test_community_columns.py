"""Column schedules: occurrences at the brand's wall-clock time, in order, once."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from services.community.domain.columns import (
    Cadence,
    Recurrence,
    next_occurrence,
    occurrence_key,
    occurrences_between,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")  # has DST, which Shanghai does not


def test_daily_new_arrivals_at_eight_in_shanghai():
    rec = Recurrence(Cadence.DAILY, at=time(8, 0))
    after = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)  # 08:00 Shanghai exactly
    assert next_occurrence(rec, after, SHANGHAI) == datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    before = after - timedelta(seconds=1)
    assert next_occurrence(rec, before, SHANGHAI) == after


def test_tuesday_member_day_and_its_end_date():
    rec = Recurrence(
        Cadence.WEEKLY, at=time(10, 0), weekdays=frozenset({1}), ends_on=date(2026, 12, 15)
    )
    start = datetime(2026, 11, 30, tzinfo=UTC)  # a Monday
    got = occurrences_between(rec, start, start + timedelta(days=60), SHANGHAI)
    assert [m.astimezone(SHANGHAI).date() for m in got] == [
        date(2026, 12, 1),
        date(2026, 12, 8),
        date(2026, 12, 15),
    ]
    assert all(m.astimezone(SHANGHAI).time() == time(10, 0) for m in got)


def test_one_off_post_fires_once():
    at = datetime(2026, 12, 12, 4, 0, tzinfo=UTC)
    rec = Recurrence(Cadence.ONCE, once_at=at)
    assert occurrences_between(rec, at - timedelta(days=1), at + timedelta(days=9), SHANGHAI) == [
        at
    ]
    assert next_occurrence(rec, at, SHANGHAI) is None


def test_problems_name_the_field():
    assert Recurrence(Cadence.WEEKLY).problems() == [
        ("weekdays", "a weekly column needs at least one weekday")
    ]
    assert Recurrence(Cadence.ONCE).problems()[0][0] == "once_at"
    bad_range = Recurrence(Cadence.DAILY, starts_on=date(2026, 2, 1), ends_on=date(2026, 1, 1))
    assert bad_range.problems() == [("ends_on", "must not be before starts_on")]
    assert Recurrence(Cadence.WEEKLY, weekdays=frozenset({7})).problems()


def test_keys_are_per_column_group_and_occurrence():
    moment = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    assert occurrence_key("c1", "g1", moment) != occurrence_key("c1", "g2", moment)
    assert occurrence_key("c1", "g1", moment) == occurrence_key(
        "c1", "g1", moment.astimezone(SHANGHAI)
    )


@given(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1)),
    st.frozensets(st.integers(0, 6), min_size=1),
    st.times(),
    st.sampled_from([SHANGHAI, NEW_YORK]),
)
def test_weekly_occurrences_land_on_their_weekday_at_their_time(start, weekdays, at, zone):
    rec = Recurrence(Cadence.WEEKLY, at=at.replace(microsecond=0), weekdays=weekdays)
    start = start.replace(tzinfo=UTC)
    got = occurrences_between(rec, start, start + timedelta(days=21), zone)
    assert got == sorted(set(got)) and all(m > start for m in got)
    # three weeks hold each weekday three times (DST gaps may shift a wall time)
    assert len(got) >= 3 * len(weekdays) - len(weekdays)
    for moment in got:
        local = moment.astimezone(zone)
        assert local.weekday() in weekdays
        if zone is SHANGHAI:
            assert local.time() == rec.at
