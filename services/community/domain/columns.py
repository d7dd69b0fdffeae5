"""Column schedules (栏目化): fixed actions at fixed times, e.g. new arrivals daily at
08:00, member day every Tuesday at 10:00, a one-off launch post. Times are the
brand's wall-clock times; occurrences are computed in UTC from them, so a post goes
out at 08:00 in the brand's time zone whatever the server's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
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


# -- columns as documents (times in epoch microseconds, dates as YYYY-MM-DD) --

COLUMN_ACTIVE, COLUMN_ARCHIVED = "active", "archived"
MAX_TITLE = 100
MAX_TEXT = 4000


def parse_at(value: str) -> time | None:
    """"HH:MM" (24 h) as a time; None when it is not one."""
    try:
        hours, minutes = value.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            return None
        return time(int(hours), int(minutes))
    except ValueError:
        return None


def parse_day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


def recurrence_of(doc: dict[str, Any]) -> Recurrence:
    """The Recurrence a column document stores (checked when it was written)."""
    once = doc.get("once_at") or 0
    return Recurrence(
        cadence=Cadence(doc["cadence"]),
        at=parse_at(doc.get("at") or "08:00") or time(8, 0),
        weekdays=frozenset(doc.get("weekdays") or ()),
        once_at=datetime.fromtimestamp(once / 1_000_000, UTC) if once else None,
        starts_on=parse_day(doc.get("starts_on") or ""),
        ends_on=parse_day(doc.get("ends_on") or ""),
    )


def next_after_micros(doc: dict[str, Any], after_micros: int, zone: ZoneInfo) -> int:
    """The column's next occurrence after `after_micros`, 0 when none is left."""
    after = datetime.fromtimestamp(after_micros / 1_000_000, UTC)
    found = next_occurrence(recurrence_of(doc), after, zone)
    return int(found.timestamp() * 1_000_000) if found else 0


def targets_group(target: dict[str, Any], group: dict[str, Any]) -> bool:
    """Whether a group is one a column's target names (active groups only)."""
    if group["state"] != "active":
        return False
    if target.get("group_id"):
        return bool(group["_id"] == target["group_id"])
    return bool(group["kind"] == target["kind"]
                and (not target.get("store_id") or group["store_id"] == target["store_id"])
                and (not target.get("city") or group["city"] == target["city"]))
