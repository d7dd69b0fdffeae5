"""Background tasks that do not die quietly: each runs under a supervisor that
restarts it with backoff when it raises (or returns before it was asked to stop),
logs every crash with its traceback, counts it, and tells the host's health which
required task is down.

A task is `async def run(stop: asyncio.Event) -> None`: it works until `stop` is set,
then returns. Metrics (per service and task):
  pond_task_restarts_total   crashes followed by a restart
  pond_task_up               1 while the task runs, 0 between a crash and its restart
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge

from services.runtime.redis_health import Backoff

log = structlog.get_logger("pond.tasks")

TASK_RESTARTS = Counter(
    "pond_task_restarts", "background task crashes followed by a restart", ["service", "task"]
)
TASK_UP = Gauge("pond_task_up", "1 while the background task runs", ["service", "task"])

Run = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(frozen=True)
class Task:
    """A background task a service declares. `required`: the service cannot serve
    while it is down (health reports NOT_SERVING between its crash and its restart)."""

    name: str
    run: Run
    required: bool = False


class Supervised:
    """One task under supervision (see the module docstring)."""

    def __init__(
        self,
        service: str,
        task: Task,
        stop: asyncio.Event,
        *,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        steady_seconds: float = 30.0,
    ) -> None:
        self.service, self.task, self.stop = service, task, stop
        self.on_change = on_change
        self.backoff = backoff or Backoff(first=0.5, cap=30.0)
        # A run that lasted this long resets the backoff: the next crash restarts soon.
        self.steady_seconds = steady_seconds
        self.up = False
        self.restarts = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.task.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"{self.service}:{self.name}")

    def _set_up(self, up: bool) -> None:
        self.up = up
        TASK_UP.labels(self.service, self.name).set(1 if up else 0)
        self.on_change()

    async def _supervise(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self._set_up(True)
            try:
                await self.task.run(self.stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("background task crashed", service=self.service, task=self.name)
            else:
                if self.stop.is_set():
                    break
                self.last_error = "returned before the service stopped"
                log.error("background task ended on its own", service=self.service, task=self.name)
            if time.monotonic() - started >= self.steady_seconds:
                self.backoff.reset()
            delay = self.backoff.next()
            self._set_up(False)
            self.restarts += 1
            TASK_RESTARTS.labels(self.service, self.name).inc()
            log.warning(
                "restarting background task", service=self.service, task=self.name,
                restart_in=delay, restarts=self.restarts,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        self._set_up(False)

    async def join(self, timeout: float) -> None:
        """Waits for the task to return after `stop` was set; cancels it after
        `timeout` seconds."""
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            if timeout > 0:
                log.warning("background task did not stop in time; cancelling",
                            service=self.service, task=self.name, timeout=timeout)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
