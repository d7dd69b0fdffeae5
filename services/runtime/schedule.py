"""When scheduled jobs run: on the clock in the brand's time zone, like cron.

A schedule is an interval and an offset: occurrences fall at local midnight plus the
offset plus whole multiples of the interval (daily at 03:00 is (24 h, 3 h); hourly at
:05 is (1 h, 5 min); every 15 minutes is (15 min, 0)). Start-up is never an
occurrence: a process started at 10:59:59 runs an hourly job at 11:00, one started at
11:00:01 waits for 12:00. An interval that does not divide a day starts again from
each local midnight (plus the offset). Counting is in real seconds from midnight, so
it holds across a daylight-saving change."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY = 86_400.0


@dataclass(frozen=True)
class Schedule:
    interval: float  # seconds, 0 < interval <= one day
    offset: float = 0.0  # seconds after local midnight, 0 <= offset < one day

    def __post_init__(self) -> None:
        if not 0 < self.interval <= DAY:
            raise ValueError("a schedule's interval is more than 0 and at most a day")
        if not 0 <= self.offset < DAY:
            raise ValueError("a schedule's offset is within a day")

    @classmethod
    def daily(cls, at: time) -> Schedule:
        return cls(DAY, at.hour * 3600 + at.minute * 60 + at.second)

    @classmethod
    def hourly(cls, minute: int = 0) -> Schedule:
        return cls(3600.0, minute * 60.0)

    @classmethod
    def every(cls, seconds: float) -> Schedule:
        return cls(float(seconds))

    def next_after(self, after: datetime, timezone: str) -> datetime:
        """The first occurrence strictly after `after` (an aware datetime)."""
        tz = ZoneInfo(timezone)
        day = after.astimezone(tz).date()
        if after < self._start(day, tz):  # before today's first: count on from yesterday's
            day -= timedelta(days=1)
        start = self._start(day, tz)
        elapsed = (after - start).total_seconds()
        found = start + timedelta(seconds=(math.floor(elapsed / self.interval) + 1) * self.interval)
        # An interval that does not divide the day starts again from the next day's.
        return min(found, self._start(day + timedelta(days=1), tz))

    def _start(self, day: date, tz: ZoneInfo) -> datetime:
        """The day's first occurrence. In UTC, so the arithmetic counts real seconds
        (also across a daylight-saving change)."""
        midnight = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
        return midnight + timedelta(seconds=self.offset)

    def describe(self) -> str:
        return f"every {self.interval:g}s from local midnight + {self.offset:g}s"


def next_occurrence(after: datetime, interval: float, timezone: str) -> datetime:
    """The first time strictly after `after` that is a whole number of `interval`
    seconds past the latest midnight in `timezone` (Schedule.every)."""
    if interval <= 0:
        raise ValueError("the jobs interval must be positive")
    return Schedule.every(interval).next_after(after, timezone)
