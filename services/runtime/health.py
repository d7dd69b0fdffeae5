"""What a service's health says, and why (standard grpc.health.v1, per name):

  ""  and the service's full name (e.g. pond.member.v1.MemberService): readiness.
      SERVING only while the service can serve its RPCs: started, not stopping, its
      store answers a probe read, every task it declared required is running, and
      Redis answers if it declared Redis required (`redis_required`). Kubernetes'
      readiness probe asks for the service's name.
  "liveness": SERVING from start-up until SIGTERM, whatever the dependencies: a
      database or Redis outage takes replicas out of the load balancer, it must not
      make Kubernetes restart them all (the liveness probe asks for this name; an event
      loop that no longer answers fails it by timing out).
  "store", "redis": each dependency on its own, for dashboards and operators
      (`grpc_health_probe -service=redis`); "redis" exists when Redis is configured.

Redis down does not make a service NOT_SERVING unless it said it needs Redis to serve:
member and tagging serve from their store while events wait in the outbox and the
consumers catch up. It is visible in "redis", in pond_redis_up{client="host:<service>"}
and in error logs.

Statuses are published when they change, so an operator's (or a test's) manual
`set_serving(False)` holds until the computed status changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
import structlog
from grpc_health.v1 import health, health_pb2

from services.runtime.redis_health import RedisLink
from services.runtime.supervision import Supervised

log = structlog.get_logger("pond.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS, STORE, REDIS = "liveness", "store", "redis"
PROBE_TIMEOUT_SECONDS = 3.0


class HealthMonitor:
    def __init__(
        self,
        service: str,
        servicer: health.aio.HealthServicer,
        *,
        probe: Callable[[], Awaitable[object]] | None,
        redis: aioredis.Redis | None,
        redis_required: bool,
        tasks: Sequence[Supervised] = (),
        interval: float = 2.0,
        name: str = "",
    ) -> None:
        self.service, self.servicer = service, servicer
        self.probe, self.redis, self.redis_required = probe, redis, redis_required
        self.tasks = list(tasks)
        self.interval = interval
        self.started = self.stopping = self.checked = False
        self.store_ok = probe is None
        self.store_down = False  # a failed probe was reported
        self.redis_ok = redis is None
        # pond_redis_up{client="host:<service>"}: the host's own view of Redis.
        self.link = RedisLink(f"host:{name or service}") if redis is not None else None
        self._published: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._publishing: set[asyncio.Task[None]] = set()  # held until done
        self.why_not = "starting"

    def readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        if not self.started or not self.checked:
            return False, "starting"
        if not self.store_ok:
            return False, "the store does not answer"
        if self.redis_required and not self.redis_ok:
            return False, "Redis does not answer"
        down = [t.name for t in self.tasks if t.task.required and not t.up]
        if down:
            return False, f"required task down: {', '.join(down)}"
        return True, ""

    async def publish(self) -> None:
        async with self._lock:  # one at a time, so a later state is never overwritten
            await self._publish()

    async def _publish(self) -> None:
        ready, why = self.readiness()
        statuses = {
            "": SERVING if ready else NOT_SERVING,
            self.service: SERVING if ready else NOT_SERVING,
            LIVENESS: NOT_SERVING if self.stopping else SERVING,
            STORE: SERVING if self.store_ok and not self.stopping else NOT_SERVING,
        }
        if self.redis is not None:
            statuses[REDIS] = SERVING if self.redis_ok and not self.stopping else NOT_SERVING
        for name, status in statuses.items():
            if self._published.get(name) != status:
                self._published[name] = status
                await self.servicer.set(name, status)
        if why != self.why_not:
            if ready:
                log.info("service ready", service=self.service)
            elif not self.stopping:
                log.warning("service not ready", service=self.service, why=why)
            self.why_not = why

    def changed(self) -> None:
        """A task went up or down: publish now (from a non-async caller)."""
        with contextlib.suppress(RuntimeError):  # no loop: nothing to publish to
            task = asyncio.get_running_loop().create_task(self.publish())
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def check(self) -> None:
        if self.probe is not None:
            try:
                await asyncio.wait_for(self.probe(), PROBE_TIMEOUT_SECONDS)
                if self.store_down:
                    log.info("store answers again", service=self.service)
                self.store_ok, self.store_down = True, False
            except Exception as exc:
                if not self.store_down:
                    log.error("store does not answer", service=self.service, error=repr(exc)[:300])
                self.store_ok, self.store_down = False, True
        if self.redis is not None and self.link is not None:
            try:
                await asyncio.wait_for(self.redis.ping(), PROBE_TIMEOUT_SECONDS)
                self.redis_ok = True
                self.link.ok()
            except (aioredis.RedisError, OSError, TimeoutError) as exc:
                self.redis_ok = False
                self.link.failed(exc)
        self.checked = True
        await self.publish()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
