"""Column schedules (栏目化): fixed actions at fixed times, e.g. new arrivals daily at
08:00, member day every Tuesday at 10:00, a one-off launch post. Times are the
brand's wall-clock times; occurrences are computed in UTC from them, so a post goes
out at 08:00 in the brand's time zone whatever the server's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

MAX_OCCURRENCES = 1000  # one query never expands more than this


class Cadence(StrEnum):
    ONCE = "once"
    DAILY = "daily"
    WEEKLY = "weekly"


@dataclass(frozen=True)
class Recurrence:
    cadence: Cadence
    at: time = time(8, 0)  # wall-clock time in the brand's zone (DAILY, WEEKLY)
    weekdays: frozenset[int] = field(default_factory=frozenset)  # 0 = Monday (WEEKLY)
    once_at: datetime | None = None  # UTC (ONCE)
    starts_on: date | None = None  # brand-local dates, inclusive
    ends_on: date | None = None

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for every rule this recurrence breaks."""
        found: list[tuple[str, str]] = []
        if self.cadence is Cadence.ONCE:
            if self.once_at is None or self.once_at.tzinfo is None:
                found.append(("once_at", "a one-off post needs its time"))
        elif self.cadence is Cadence.WEEKLY:
            if not self.weekdays:
                found.append(("weekdays", "a weekly column needs at least one weekday"))
            elif not all(0 <= d <= 6 for d in self.weekdays):
                found.append(("weekdays", "weekdays are 0 (Monday) to 6 (Sunday)"))
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            found.append(("ends_on", "must not be before starts_on"))
        return found


def _local_at(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _runs_on(rec: Recurrence, day: date) -> bool:
    if rec.starts_on and day < rec.starts_on:
        return False
    if rec.ends_on and day > rec.ends_on:
        return False
    return rec.cadence is Cadence.DAILY or day.weekday() in rec.weekdays


def next_occurrence(rec: Recurrence, after: datetime, zone: ZoneInfo) -> datetime | None:
    """The first occurrence strictly after `after` (UTC), or None when none is left."""
    if rec.cadence is Cadence.ONCE:
        return rec.once_at if rec.once_at is not None and rec.once_at > after else None
    day = after.astimezone(zone).date() - timedelta(days=1)  # a DST shift can move a day
    if rec.starts_on and day < rec.starts_on:
        day = rec.starts_on
    for _ in range(8 + 1):  # a week covers every weekday
        if rec.ends_on and day > rec.ends_on:
            return None
        if _runs_on(rec, day):
            moment = _local_at(day, rec.at, zone)
            if moment > after:
                return moment
        day += timedelta(days=1)
    return None


def occurrences_between(
    rec: Recurrence, start: datetime, end: datetime, zone: ZoneInfo, limit: int = MAX_OCCURRENCES
) -> list[datetime]:
    """Occurrences in (start, end], oldest first, at most `limit`."""
    found: list[datetime] = []
    moment = next_occurrence(rec, start, zone)
    while moment is not None and moment <= end and len(found) < limit:
        found.append(moment)
        moment = next_occurrence(rec, moment, zone)
    return found


def occurrence_key(column_id: str, group_id: str, moment: datetime) -> str:
    """One post per column, group and occurrence: the outbox event's idempotency key,
    so a replica or a restart that fires the same occurrence again posts nothing."""
    return f"{column_id}:{group_id}:{moment.astimezone(UTC):%Y%m%dT%H%M}"
