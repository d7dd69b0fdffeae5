"""Daily check-in (签到): once per member per calendar day of the brand's time zone,
with the current and best streak. No I/O: days come in as dates."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

Doc = dict[str, Any]


def brand_day(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def next_streak(streak: Doc | None, today: date) -> Doc:
    """The member's streak record after checking in `today` (once a day: the caller
    knows today's check-in is new)."""
    if streak is None:
        return {"streak": 1, "best_streak": 1, "total_days": 1, "last_day": today.isoformat()}
    last = date.fromisoformat(streak["last_day"])
    run = streak["streak"] + 1 if last == today - timedelta(days=1) else 1
    return {**streak, "streak": run, "best_streak": max(run, streak["best_streak"]),
            "total_days": streak["total_days"] + 1, "last_day": today.isoformat()}


def may_have_checked_in(streak: Doc | None, day: date) -> bool:
    """Whether a check-in on `day` can exist: the streak is written with every
    check-in, so not when there is none or its last day is before `day` (a last day
    after it: a clock set back)."""
    return streak is not None and streak["last_day"] >= day.isoformat()


def current_streak(streak: Doc | None, today: date) -> int:
    """Days in a row that end today or yesterday (still unbroken); 0 otherwise."""
    if streak is None:
        return 0
    last = date.fromisoformat(streak["last_day"])
    return int(streak["streak"]) if today - last <= timedelta(days=1) else 0


def streak_of_days(days: set[date]) -> Doc | None:
    """The streak record of a set of check-in days (two records of one person merged):
    the run that ends on the last day, the longest run, the number of days."""
    if not days:
        return None
    ordered = sorted(days)
    best = run = 1
    for before, after in pairwise(ordered):
        run = run + 1 if after - before == timedelta(days=1) else 1
        best = max(best, run)
    return {"streak": run, "best_streak": best, "total_days": len(ordered),
            "last_day": ordered[-1].isoformat()}
