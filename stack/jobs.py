"""The dev stack's scheduler: the periodic jobs a Kubernetes CronJob runs in
production (by calling the same RPCs)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from services.member.app import MemberApp
from services.runtime.logs import get_logger
from services.tagging.runs import ScoringRunner

log = get_logger("pond.jobs")


async def run_schedule(member: MemberApp, scoring: ScoringRunner, stop: asyncio.Event) -> None:
    interval = float(os.environ.get("POND_JOBS_INTERVAL_SECONDS", "3600"))
    while not stop.is_set():
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
            log.exception("scheduled jobs failed; will retry next interval")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
