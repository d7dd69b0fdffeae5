"""Durable timers: a use case sets a timer in the same unit of work as the state it
belongs to (`uow.set_timer(Timer(id, kind, due_at, payload))`), so one cannot exist
without the other; the host's timer loop fires it at or after `due_at`.

Firing runs the handler registered for the timer's kind with a fresh unit of work
and commits it together with `uow.fire(timer)`, a delete guarded by the timer's
version: of replicas that read the same due timer, exactly one commit lands (the
others get Conflict on the timer and drop it), so a timer's effects happen once. A
handler that raises is tried again with backoff (per timer, from 1 s doubling up to 5
minutes) until it succeeds: at least once. A timer due while no replica ran (a
restart, a kill -9) fires at the next poll after start-up. A handler may set the
same timer id again in its unit of work (a recurring timer): the new one has a new
version. Handlers hold no state outside their unit of work; what they log carries
the request id "timer:<id>", and events they emit carry it on.

The loop polls `due_timers` every `poll_seconds` and at once when a commit sets a
timer due within that (the host's store wakes it). Times come from the service's
clock, so tests move a ManualClock instead of sleeping.

Metrics: pond_timers_fired_total{service,kind}, pond_timer_failures_total{service,
kind}, pond_timers_due{service} (due and not yet fired, at the last poll).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import structlog
from prometheus_client import Counter, Gauge

from services.runtime.clock import Clock, epoch_micros
from services.runtime.documents import TIMERS, Conflict, DocumentStore, Timer, UnitOfWork
from services.runtime.logs import request_id_var

log = structlog.get_logger("pond.timers")

FIRED = Counter("pond_timers_fired", "timers fired (their handler's writes committed)",
                ["service", "kind"])
FAILURES = Counter("pond_timer_failures", "timer handler failures (retried with backoff)",
                   ["service", "kind"])
DUE = Gauge("pond_timers_due", "timers due and not fired yet, at the last poll", ["service"])

TimerHandler = Callable[[Timer, UnitOfWork], Awaitable[None]]
CONFLICT_ATTEMPTS = 5
RETRY_FIRST_SECONDS = 1.0
RETRY_CAP_SECONDS = 300.0


class TimerLoop:
    def __init__(
        self,
        service: str,
        store: DocumentStore,
        handlers: Mapping[str, TimerHandler],
        clock: Clock,
        *,
        poll_seconds: float = 1.0,
        batch: int = 100,
    ) -> None:
        self.service, self.store, self.handlers, self.clock = service, store, handlers, clock
        self.poll_seconds, self.batch = poll_seconds, batch
        self._wake = asyncio.Event()
        # (id, version) -> (failures, epoch micros before which it is not tried again)
        self._retry: dict[tuple[str, int], tuple[int, int]] = {}

    def wake(self) -> None:
        self._wake.set()

    def wakes_for(self, uow: UnitOfWork) -> bool:
        """Whether a committed unit of work set a timer due before the next poll."""
        if not uow.timers:
            return False
        soon = epoch_micros(self.clock.now()) + int(self.poll_seconds * 1_000_000)
        return any(t.due_at <= soon for t in uow.timers)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            fired = await self.fire_due()
            if fired == self.batch:
                continue  # more are due
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=self.poll_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()

    async def fire_due(self) -> int:
        """One round: fires the due timers (soonest first) that are not waiting out a
        retry; returns how many this replica fired."""
        now = epoch_micros(self.clock.now())
        due = await self.store.due_timers(now, self.batch)
        DUE.labels(self.service).set(len(due))
        live = {(t.id, t.version) for t in due}
        for key in [k for k in self._retry if k not in live]:
            del self._retry[key]  # fired elsewhere, moved or cancelled
        fired = 0
        for timer in due:
            retry = self._retry.get((timer.id, timer.version))
            if retry is not None and retry[1] > now:
                continue
            fired += await self._fire(timer, now)
        return fired

    async def _fire(self, timer: Timer, now: int) -> int:
        handler = self.handlers.get(timer.kind)
        bound = request_id_var.set(f"timer:{timer.id}"[:64])
        try:
            if handler is None:
                raise LookupError(f"no handler for timers of kind {timer.kind!r}")
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                uow = UnitOfWork()
                await handler(timer, uow)
                uow.fire(timer)
                try:
                    await self.store.commit(uow)
                except Conflict as exc:
                    if exc.collection == TIMERS:
                        return 0  # another replica fired it (or it was moved)
                    if attempt == CONFLICT_ATTEMPTS:
                        raise
                    continue
                break
        except Exception as exc:
            self._failed(timer, now, exc)
            return 0
        finally:
            request_id_var.reset(bound)
        self._retry.pop((timer.id, timer.version), None)
        FIRED.labels(self.service, timer.kind).inc()
        return 1

    def _failed(self, timer: Timer, now: int, exc: Exception) -> None:
        failures = self._retry.get((timer.id, timer.version), (0, 0))[0] + 1
        delay = min(RETRY_FIRST_SECONDS * 2 ** (failures - 1), RETRY_CAP_SECONDS)
        self._retry[(timer.id, timer.version)] = (failures, now + int(delay * 1_000_000))
        FAILURES.labels(self.service, timer.kind).inc()
        log.error("timer handler failed; will retry", service=self.service, timer=timer.id,
                  kind=timer.kind, failures=failures, retry_in=delay, error=repr(exc)[:300])


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
