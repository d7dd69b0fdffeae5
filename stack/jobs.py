"""The dev stack's scheduler: the periodic jobs a Kubernetes CronJob runs in
production (by calling the same RPCs).

Like a cron schedule, the jobs run on the clock, not at start-up: at every whole
multiple of the interval counted from midnight in the brand's time zone (with the
default hour: on the hour, every hour). Restarting the stack neither runs them
early nor postpones them."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.member.app import MemberApp
from services.runtime.clock import Clock, SystemClock
from services.runtime.logs import get_logger
from services.tagging.runs import ScoringRunner

log = get_logger("pond.jobs")


def next_occurrence(after: datetime, interval: float, timezone: str) -> datetime:
    """The first time strictly after `after` that is a whole number of `interval`
    seconds past the latest midnight in `timezone`."""
    if interval <= 0:
        raise ValueError("the jobs interval must be positive")
    tz = ZoneInfo(timezone)
    local = after.astimezone(tz)
    # In UTC, so the arithmetic below counts real seconds (also across a DST change).
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz).astimezone(UTC)
    elapsed = (after - midnight).total_seconds()
    return midnight + timedelta(seconds=(math.floor(elapsed / interval) + 1) * interval)


async def run_jobs(member: MemberApp, scoring: ScoringRunner) -> None:
    try:
        expired = await member.run_points_expiry(remind_within_days=30)
        evaluated = await member.evaluate_tiers()
        gifted, _points = await member.grant_birthday_gifts()
        run = await scoring.begin()
        await scoring.execute(run.id)
        log.info(
            "scheduled jobs ran",
            points_expiry=expired,
            tiers=evaluated,
            birthday_gifts=gifted,
            scoring_run=run.id,
        )
    except Exception:
        log.exception("scheduled jobs failed; will retry at the next occurrence")


async def run_schedule(
    member: MemberApp,
    scoring: ScoringRunner,
    stop: asyncio.Event,
    *,
    interval: float = 3600,
    timezone: str = "Asia/Shanghai",
    clock: Clock | None = None,
) -> None:
    clock = clock or SystemClock()
    due = next_occurrence(clock.now(), interval, timezone)
    while not stop.is_set():
        log.info("scheduled jobs: next run", at=due.astimezone(ZoneInfo(timezone)).isoformat())
        try:
            wait = max((due - clock.now()).total_seconds(), 0.0)
            await asyncio.wait_for(stop.wait(), wait)
            return
        except TimeoutError:
            pass
        await run_jobs(member, scoring)
        # From `due` too: a timer that fires a little early must not run them twice.
        due = next_occurrence(max(clock.now(), due), interval, timezone)
