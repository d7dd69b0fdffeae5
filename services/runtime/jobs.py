"""Scheduled jobs: declared by a service (a name, a Schedule in the brand's time zone,
a coroutine), run by its host on every replica's clock, and run once per occurrence
across replicas. The same path under `make run` and in Kubernetes: no CronJob, no
RPC kept open for the length of a job.

Once per occurrence: a lease in Redis per job and occurrence
(`pond:<service>:job:<name>:<occurrence, epoch seconds>`). At the occurrence every
replica tries to take it (SET NX PX); the one that does runs the job, renewing the
lease every third of its life, and on success replaces it with "done" (kept until
well after the next occurrence). The others watch the key: "done" ends the
occurrence for them; a key gone (the runner was killed and its lease lapsed, or it
stopped and released it) makes them try again, so a job cut short still runs
(at least once; jobs are written to be rerun safely). A failed run leaves "failed"
for a backoff (10 s doubling up to 10 minutes), after which any replica tries again,
until the next occurrence comes. A replica that loses the lease while running
(Redis unreachable past its life) cancels its run rather than run beside another.

Why a lease in Redis rather than a record in the store: a job spans many units of
work and runs for minutes, so what says "someone is on it" must expire on its own
when that someone dies, which a lease does and a stored record would need a
heartbeat protocol for. Redis being unreachable delays the job until it is back;
losing Redis's data at worst runs an idempotent job once more.

Occurrences that came while no replica was running are not made up at start-up
(start-up is not an occurrence); rolling updates keep a replica running.

Metrics: pond_job_runs_total{service,job,outcome=succeeded|failed|cut_short},
pond_job_occurrences_total{service,job,part=ran|taken} (each replica, per occurrence:
it ran the job, or found it taken by another),
pond_job_last_success_timestamp_seconds, pond_job_last_duration_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter, Gauge

from services.runtime.clock import Clock
from services.runtime.leases import Lease, Leases
from services.runtime.logs import request_id_var
from services.runtime.redis_health import Backoff, RedisLink
from services.runtime.schedule import Schedule

log = structlog.get_logger("pond.jobs")

RUNS = Counter("pond_job_runs", "scheduled job runs by outcome", ["service", "job", "outcome"])
OCCURRENCES = Counter(
    "pond_job_occurrences", "occurrences a replica reached: it ran the job, or found it taken",
    ["service", "job", "part"],
)
LAST_SUCCESS = Gauge("pond_job_last_success_timestamp_seconds",
                     "when the job last succeeded (unix time)", ["service", "job"])
LAST_DURATION = Gauge("pond_job_last_duration_seconds", "how long the job's last run took",
                      ["service", "job"])
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class Job:
    name: str
    schedule: Schedule
    run: Callable[[], Coroutine[Any, Any, object]]  # what it returns is logged
    lease_seconds: float = 30.0


class JobLoop:
    """Runs one job at its occurrences (see the module docstring)."""

    def __init__(
        self,
        service: str,
        job: Job,
        leases: Leases,
        clock: Clock,
        timezone: str,
        *,
        poll_seconds: float = 1.0,
        retry: Backoff | None = None,
    ) -> None:
        self.service, self.job, self.leases, self.clock = service, job, leases, clock
        self.timezone, self.poll_seconds = timezone, poll_seconds
        self.retry = retry or Backoff(first=10.0, cap=600.0)
        self.link = RedisLink(f"job:{service}:{job.name}")
        self._wake = asyncio.Event()
        self.ttl_ms = int(job.lease_seconds * 1000)

    def wake(self) -> None:
        """Look at the clock now (tests move a ManualClock, then wake the loop)."""
        self._wake.set()

    def lease_name(self, occurrence: datetime) -> str:
        """Under the service's prefix: pond:<service>:job:<name>:<epoch seconds>."""
        return f"job:{self.job.name}:{int(occurrence.timestamp())}"

    async def run(self, stop: asyncio.Event) -> None:
        due = self.job.schedule.next_after(self.clock.now(), self.timezone)
        log.info("job scheduled", service=self.service, job=self.job.name,
                 next=due.isoformat(), schedule=self.job.schedule.describe())
        while not stop.is_set():
            now = self.clock.now()
            if now < due:
                await self._pause(stop, min((due - now).total_seconds(), self.poll_seconds))
                continue
            following = self.job.schedule.next_after(due, self.timezone)
            await self._occurrence(due, following, stop)
            # The next one, or the latest that came while this one ran (never older
            # ones: a job brings everything up to date, once is enough).
            due = max(following, self._latest(self.clock.now()))

    def _latest(self, now: datetime) -> datetime:
        """The latest occurrence at or before `now` (occurrences are never more than
        an interval apart)."""
        schedule = self.job.schedule
        found = schedule.next_after(now - timedelta(seconds=schedule.interval), self.timezone)
        while (later := schedule.next_after(found, self.timezone)) <= now:
            found = later
        return found

    async def _occurrence(self, due: datetime, following: datetime, stop: asyncio.Event) -> None:
        name = self.lease_name(due)
        done_ms = int(max(2 * (following - due).total_seconds(), 3600) * 1000)
        self.retry.reset()
        taken = False
        while not stop.is_set() and self.clock.now() < following:
            lease = self.leases.lease(name, self.ttl_ms)
            try:
                if await lease.acquire():
                    self.link.ok()
                    OCCURRENCES.labels(self.service, self.job.name, "ran").inc()
                    ok = await self._run_under(lease, due, stop)
                    if ok is None:  # stopped or cut short: released, someone retries
                        continue
                    if ok:
                        await lease.hand_over(DONE, done_ms)
                        return
                    await lease.hand_over(FAILED, int(self.retry.next() * 1000))
                    continue
                holder = await lease.holder()
                self.link.ok()
                if not taken:
                    taken = True
                    OCCURRENCES.labels(self.service, self.job.name, "taken").inc()
                if holder == DONE:
                    return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                await self._pause(stop, self.link.failed(exc))
                continue
            # Running elsewhere, or failed a moment ago: look again in a while.
            await self._pause(stop, min(self.ttl_ms / 3000, self.poll_seconds))

    async def _run_under(self, lease: Lease, due: datetime, stop: asyncio.Event) -> bool | None:
        """True: succeeded; False: failed; None: cut short (stop, or the lease lost)."""
        name = self.job.name
        bound = request_id_var.set(f"job:{name}:{int(due.timestamp())}"[:64])
        started = time.monotonic()
        log.info("job started", service=self.service, job=name, occurrence=due.isoformat())
        work: asyncio.Task[object] = asyncio.create_task(
            self.job.run(), name=f"{self.service}:job:{name}")
        stopper = asyncio.ensure_future(stop.wait())
        try:
            renewed = time.monotonic()
            while not work.done():
                await asyncio.wait({work, stopper}, timeout=self.ttl_ms / 3000,
                                   return_when=asyncio.FIRST_COMPLETED)
                if work.done():
                    break
                if stop.is_set():
                    await self._cut_short(work, lease, "the service is stopping")
                    return None
                try:
                    if not await lease.renew():
                        await self._cut_short(work, lease, "its lease went to another")
                        return None
                    renewed = time.monotonic()
                except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                    self.link.failed(exc)
                    if time.monotonic() - renewed > 0.8 * self.ttl_ms / 1000:
                        await self._cut_short(work, lease, "Redis unreachable")
                        return None
            seconds = time.monotonic() - started
            LAST_DURATION.labels(self.service, name).set(seconds)
            try:
                result = work.result()
            except Exception:
                RUNS.labels(self.service, name, "failed").inc()
                log.exception("job failed; will retry", service=self.service, job=name,
                              seconds=round(seconds, 3))
                return False
            RUNS.labels(self.service, name, "succeeded").inc()
            LAST_SUCCESS.labels(self.service, name).set(time.time())
            log.info("job succeeded", service=self.service, job=name, result=result,
                     seconds=round(seconds, 3))
            return True
        finally:
            stopper.cancel()
            request_id_var.reset(bound)

    async def _cut_short(self, work: asyncio.Task[object], lease: Lease, why: str) -> None:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        RUNS.labels(self.service, self.job.name, "cut_short").inc()
        log.warning("job cut short; another replica will run it", service=self.service,
                    job=self.job.name, why=why)
        with contextlib.suppress(aioredis.RedisError, OSError):
            await lease.release()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=max(seconds, 0.0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        self._wake.clear()


def with_interval(job: Job, interval: float) -> Job:
    """The job every `interval` seconds from local midnight (POND_JOBS_INTERVAL_SECONDS:
    the dev stack runs every job hourly)."""
    return replace(job, schedule=Schedule.every(interval))
