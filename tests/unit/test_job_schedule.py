"""When scheduled jobs run: on the clock in the brand's time zone
(every whole interval after local midnight), never merely because it started."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.runtime.schedule import next_occurrence

SHANGHAI = "Asia/Shanghai"


@pytest.mark.parametrize(
    ("now", "interval", "expected"),
    [
        # hourly: the next full hour
        (datetime(2026, 3, 1, 2, 17, 5, tzinfo=UTC), 3600, datetime(2026, 3, 1, 3, 0, tzinfo=UTC)),
        # exactly on the hour: the next one, not this one again
        (datetime(2026, 3, 1, 3, 0, tzinfo=UTC), 3600, datetime(2026, 3, 1, 4, 0, tzinfo=UTC)),
        # daily: midnight in Shanghai is 16:00 UTC
        (datetime(2026, 3, 1, 2, 0, tzinfo=UTC), 86400, datetime(2026, 3, 1, 16, 0, tzinfo=UTC)),
        (datetime(2026, 3, 1, 17, 0, tzinfo=UTC), 86400, datetime(2026, 3, 2, 16, 0, tzinfo=UTC)),
        # every 15 minutes
        (datetime(2026, 3, 1, 2, 44, 59, tzinfo=UTC), 900, datetime(2026, 3, 1, 2, 45, tzinfo=UTC)),
    ],
)
def test_next_occurrence_is_on_the_clock(now: datetime, interval: float, expected: datetime):
    assert next_occurrence(now, interval, SHANGHAI) == expected


def test_start_up_is_not_an_occurrence():
    # A stack started at 10:59:59 runs the hourly jobs at 11:00, not at once; one
    # started at 11:00:01 waits for 12:00.
    assert next_occurrence(datetime(2026, 3, 1, 10, 59, 59, tzinfo=UTC), 3600, "UTC") == datetime(
        2026, 3, 1, 11, 0, tzinfo=UTC
    )
    assert next_occurrence(datetime(2026, 3, 1, 11, 0, 1, tzinfo=UTC), 3600, "UTC") == datetime(
        2026, 3, 1, 12, 0, tzinfo=UTC
    )


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        next_occurrence(datetime(2026, 3, 1, tzinfo=UTC), 0, SHANGHAI)
