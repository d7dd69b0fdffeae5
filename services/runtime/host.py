"""The service host: builds a service from the parts it declares and runs them.

A service's server.py declares a ServiceSpec (name, settings class, ports, and a
`build(ctx)` that opens its store through the context, makes its use cases and
returns a `Service`: the servicer and auth rules, the stream it publishes, the
consumers with their handlers, timer handlers, jobs, extra tasks, closers). The host
does the rest, the same way for every service, in `python -m services.<name>` and
in `make run`:

  start   Redis client (REDIS_URL) -> build (the store it opens) -> gRPC server
          (interceptor, health NOT_SERVING, reflection, metrics) -> supervised tasks:
          outbox relay (one publisher per service, a Redis lease), event consumers
          (one consumer group per stream, see consumer_groups.py),
          the timer loop, one loop per scheduled job, the processed-mark and
          idempotency prune job, the service's own tasks, health checks and
          backlog/lag metrics -> health from what the service needs (health.py).
  stop    (SIGTERM) health NOT_SERVING -> the server drains in-flight calls for
          `grace` seconds and stops -> consumers, timers, jobs and the service's tasks
          stop (finishing what they hold, cancelled after the grace) -> the relay
          publishes what is left and releases its lease -> the service's closers, in
          order -> Redis and client channels -> the store.

Every background task runs supervised (supervision.py): restarted with backoff when
it crashes, logged, counted, and reported to health when the service declared it
required.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
import structlog
from google.protobuf.descriptor import ServiceDescriptor

from services.runtime.clients import Channels, Client, ServiceToken, make_client
from services.runtime.clock import Clock, SystemClock, epoch_micros
from services.runtime.config import RuntimeSettings
from services.runtime.consumer_groups import Consumer as Consumer
from services.runtime.consumer_groups import consumer_groups
from services.runtime.documents import DocumentStore, Schema, open_document_store
from services.runtime.eventbus import EventConsumer
from services.runtime.health import HealthMonitor
from services.runtime.jobs import Job, JobLoop, with_interval
from services.runtime.leases import Leases
from services.runtime.notifying_store import NotifyingStore
from services.runtime.outbox import OutboxRelay, OutboxStore
from services.runtime.redis_conn import connect_redis
from services.runtime.redis_health import Backoff
from services.runtime.redis_scripts import ScriptRegistry
from services.runtime.schedule import Schedule
from services.runtime.server import PondServer, ServiceRegistration
from services.runtime.supervision import Supervised, Task
from services.runtime.timers import TimerHandler, TimerLoop

log = structlog.get_logger("pond.host")

S = TypeVar("S", bound=RuntimeSettings)
C = TypeVar("C")
PRUNE_JOB = "prune-records"


@dataclass
class Service:
    """The parts a service declares (everything but `registration` is optional)."""

    registration: ServiceRegistration
    store: DocumentStore | None = None
    publishes: str = ""  # the stream its outbox relay publishes to
    outbox: OutboxStore | None = None  # what the relay reads; default: the store
    consumers: Sequence[Consumer] = ()
    timers: Mapping[str, TimerHandler] = field(default_factory=dict)
    jobs: Sequence[Job] = ()
    tasks: Sequence[Task] = ()
    # Whether the store answers (health); default: a point read on `store`.
    probe: Callable[[], Awaitable[object]] | None = None
    redis_required: bool = False
    closers: Sequence[Callable[[], Awaitable[object]]] = ()
    handle: Any = None  # whatever the builder keeps reachable (the app, for tests)


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    name: str
    settings: type[S]
    build: Callable[[HostContext[S]], Awaitable[Service]]
    port: Callable[[S], int]
    metrics_port: Callable[[S], int]
    # Production refuses to start while any of these (env var -> value) is empty.
    required: Callable[[S], dict[str, str]] = lambda _settings: {}


@dataclass
class HostOptions:
    """Timings a test shortens (production uses the defaults and the settings)."""

    health_seconds: float = 2.0
    metrics_seconds: float = 15.0
    restart_backoff: Callable[[], Backoff] = lambda: Backoff(first=0.5, cap=30.0)
    timer_poll_seconds: float = 1.0
    job_poll_seconds: float = 1.0


class HostContext(Generic[S]):
    """What a service's `build` gets from its host."""

    def __init__(self, host: ServiceHost[S]) -> None:
        self._host = host
        self.name = host.spec.name
        self.settings: S = host.settings
        self.clock: Clock = host.clock
        self.redis: aioredis.Redis | None = host.redis

    async def open_store(self, schema: Schema) -> DocumentStore:
        """The service's document store (SQLite `<data dir>/<service>.db`, or MongoDB
        when MONGODB_URI is set), closed by the host last. Its commits wake the relay
        and the timer loop by themselves."""
        return await self._host.open_store(schema)

    def notify_commit(self) -> None:
        """For a store the host did not open: call after a commit that wrote events."""
        self._host.notify_commit()

    def client(
        self,
        target: str,
        stub_class: Callable[[Any], C],
        service: ServiceDescriptor,
        *,
        idempotent: Sequence[str] = (),
    ) -> Client[C]:
        """A client of another service (clients.py), with this service's own token."""
        return make_client(self._host.channels, target, stub_class, service,
                           self._host.token(), idempotent=idempotent)


class ServiceHost(Generic[S]):
    def __init__(
        self,
        spec: ServiceSpec[S],
        settings: S,
        *,
        clock: Clock | None = None,
        port: int | None = None,
        metrics: bool = True,
        options: HostOptions | None = None,
    ) -> None:
        self.spec, self.settings = spec, settings
        self.clock = clock or SystemClock()
        self.options = options or HostOptions()
        self._port = spec.port(settings) if port is None else port
        self._metrics_port = spec.metrics_port(settings) if metrics else 0
        self.redis: aioredis.Redis | None = None
        # The service's Lua scripts (pond:<service>:): the relay's and the jobs' leases.
        self.scripts: ScriptRegistry | None = None
        self.channels = Channels()
        self._token: ServiceToken | None = None
        self._stores: list[DocumentStore] = []
        self.service: Service | None = None
        self.server: PondServer | None = None
        self.relay: OutboxRelay | None = None
        self.timer_loop: TimerLoop | None = None
        self.job_loops: list[JobLoop] = []
        self.consumers: list[EventConsumer] = []
        self.health: HealthMonitor | None = None
        # Stop phases: what writes, then the relay, then the monitors.
        self._stops = {phase: asyncio.Event() for phase in ("work", "relay", "watch")}
        self._tasks: dict[str, list[Supervised]] = {phase: [] for phase in self._stops}

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def supervised(self) -> list[Supervised]:
        return [t for phase in self._tasks.values() for t in phase]

    def token(self) -> ServiceToken:
        if self._token is None:
            self._token = ServiceToken(self.settings.auth_config(), self.spec.name)
        return self._token

    async def open_store(self, schema: Schema) -> DocumentStore:
        s = self.settings
        inner = await open_document_store(
            schema, sqlite_path=str(s.data_dir / f"{schema.service}.db"),
            mongodb_uri=s.mongodb_uri, mongodb_db=s.mongodb_db,
        )
        store = NotifyingStore(inner)
        store.on_events = self.notify_commit
        store.on_timers = self._timers_committed
        self._stores.append(store)
        return store

    def notify_commit(self) -> None:
        if self.relay is not None:
            self.relay.notify()

    def _timers_committed(self, uow: Any) -> None:
        if self.timer_loop is not None and self.timer_loop.wakes_for(uow):
            self.timer_loop.wake()

    # -- start --
    async def start(self) -> ServiceHost[S]:
        s = self.settings
        if s.redis_url:
            self.redis = connect_redis(s.redis_url)
        try:
            self.service = service = await self.spec.build(HostContext(self))
            self.server = PondServer(
                service.registration, auth=s.auth_config(), page_key=s.page_key(), host=s.host,
                port=self._port,
                metrics_port=self._metrics_port, max_receive_bytes=s.max_receive_bytes,
                max_concurrent_streams=s.max_concurrent_streams,
            )
            self._declare_tasks(service)
            self.health = HealthMonitor(
                service.registration.descriptor.full_name, self.server.health,
                probe=service.probe or _store_probe(service.store), redis=self.redis,
                redis_required=service.redis_required, tasks=self.supervised,
                interval=self.options.health_seconds, name=self.spec.name,
            )
            await self.health.publish()  # NOT_SERVING until the first checks pass
            await self.server.start(serving=False)
            for task in self.supervised:
                task.start()
            self.health.started = True
            await self.health.check()
        except BaseException:
            await self._close_resources()
            raise
        log.info("service started", service=self.spec.name, port=self.port,
                 tasks=[t.name for t in self.supervised])
        return self

    def _declare_tasks(self, service: Service) -> None:
        s, name, opts = self.settings, self.spec.name, self.options
        work: list[Task] = []
        leases: Leases | None = None
        if self.redis is not None:
            self.scripts = ScriptRegistry(self.redis, f"pond:{name}:",
                                          streams=[service.publishes] if service.publishes else [])
            leases = Leases(self.scripts)
            # One group per stream (and group name) whatever the number of concerns
            # declared on it (consumer_groups.py).
            for c in consumer_groups(service.consumers, name):
                consumer = EventConsumer(
                    self.redis, c.stream, c.group, f"{socket.gethostname()}-{os.getpid()}",
                    c.handle, block_ms=c.block_ms or s.event_block_ms,
                    max_deliveries=c.max_deliveries or s.event_max_deliveries,
                    claim_idle_ms=c.claim_idle_ms or s.event_claim_idle_ms,
                    # The payload types its handlers act on: the rest of the stream
                    # is acked in bulk.
                    wanted=c.wanted,
                    # Handlers with processed marks need no done keys in Redis.
                    done_keys=not c.keeps_marks,
                )
                self.consumers.append(consumer)
                label = f"consumer:{c.stream}" + ("" if c.group == name else f":{c.group}")
                work.append(Task(label, consumer.run))
        elif service.consumers:
            log.warning("no Redis: event consumers are off", service=name)
        store = service.store
        if service.timers:
            if store is None:
                raise RuntimeError(f"{name}: timers need the service's document store")
            self.timer_loop = TimerLoop(name, store, service.timers, self.clock,
                                        poll_seconds=opts.timer_poll_seconds)
            work.append(Task("timers", self.timer_loop.run))
        jobs = list(service.jobs) if s.jobs_enabled else []
        if store is not None and s.jobs_enabled:
            jobs.append(prune_job(store, s, self.clock))
        if s.jobs_interval_seconds > 0:
            jobs = [with_interval(job, s.jobs_interval_seconds) for job in jobs]
        if leases is not None:
            for job in jobs:
                loop = JobLoop(name, job, leases, self.clock, s.timezone,
                               poll_seconds=opts.job_poll_seconds)
                self.job_loops.append(loop)
                work.append(Task(f"job:{job.name}", loop.run))
        elif jobs:
            log.warning("no Redis: scheduled jobs are off (their lease lives in Redis)",
                        service=name)
        work.extend(service.tasks)
        outbox = service.outbox or store
        relay: list[Task] = []
        if service.publishes and outbox is not None and leases is not None:
            self.relay = OutboxRelay(
                outbox, leases, service.publishes, poll_seconds=s.outbox_poll_seconds,
                service=name, lease_ttl_seconds=s.outbox_lease_seconds,
                coalesce_seconds=s.outbox_coalesce_seconds,
            )
            if s.outbox_relay_enabled:
                relay.append(Task("relay", self.relay.run))
        watch = [Task("health", self._check_health), Task("metrics", self._measure)]
        for phase, tasks in (("work", work), ("relay", relay), ("watch", watch)):
            for task in tasks:
                self._tasks[phase].append(Supervised(
                    name, task, self._stops[phase], on_change=self._task_changed,
                    backoff=opts.restart_backoff(),
                ))

    def _task_changed(self) -> None:
        if self.health is not None:
            self.health.changed()

    async def _check_health(self, stop: asyncio.Event) -> None:
        assert self.health is not None
        await self.health.run(stop)

    async def _measure(self, stop: asyncio.Event) -> None:
        """Backlog and lag gauges, every few seconds (failures only skip a round)."""
        while not stop.is_set():
            measures = [c.measure for c in self.consumers]
            if self.relay is not None:
                measures.append(self.relay.measure)
            for measure in measures:
                try:
                    await measure()
                except Exception as exc:
                    log.debug("metrics round skipped", error=repr(exc)[:200])
            try:
                await asyncio.wait_for(stop.wait(), self.options.metrics_seconds)
            except TimeoutError:
                pass

    def wake_timers_and_jobs(self) -> None:
        """Look at the clock now (tests move a ManualClock, then call this)."""
        if self.timer_loop is not None:
            self.timer_loop.wake()
        for loop in self.job_loops:
            loop.wake()

    # -- stop --
    async def stop(self, grace: float = 5.0) -> None:
        try:
            log.info("service stopping", service=self.spec.name, grace=grace)
            if self.health is not None:
                self.health.stopping = True
                await self.health.publish()
            if self.server is not None:
                await self.server.stop(grace)
            for phase in ("work", "relay", "watch"):
                self._stops[phase].set()
                wait = grace if phase == "work" else max(min(grace, 5.0), 1.0)
                await asyncio.gather(*(t.join(wait) for t in self._tasks[phase]))
            if self.service is not None:
                for close in self.service.closers:
                    try:
                        await close()
                    except Exception:
                        log.exception("closing failed", service=self.spec.name)
        finally:
            # Whatever failed above (a log line to a closed stdout, say): an unclosed
            # store keeps its connections' threads, and they keep the process alive.
            await self._close_resources()
        log.info("service stopped", service=self.spec.name)

    async def _close_resources(self) -> None:
        """Each resource closed even when closing another fails."""
        for close in (self.channels.close,
                      *((self.redis.aclose,) if self.redis is not None else ()),
                      *(store.close for store in reversed(self._stores))):
            try:
                await close()
            except Exception:
                with contextlib.suppress(Exception):
                    log.exception("closing failed", service=self.spec.name)
        self._stores.clear()


def _store_probe(store: DocumentStore | None) -> Callable[[], Awaitable[object]] | None:
    if store is None:
        return None
    return lambda: store.is_processed("_health", "probe")


def prune_job(store: DocumentStore, settings: RuntimeSettings, clock: Clock) -> Job:
    """Hourly, for every service: idempotency records past their expires_at (each set
    when written, POND_IDEMPOTENCY_RETENTION_DAYS on) and processed-event marks older
    than POND_PROCESSED_RETENTION_DAYS go. The one path that prunes either."""
    retention = timedelta(days=settings.processed_retention_days)

    async def prune() -> int:
        now = clock.now()
        return await store.prune(epoch_micros(now), epoch_micros(now - retention))

    return Job(PRUNE_JOB, Schedule.hourly(minute=17), prune)


async def start_service(
    spec: ServiceSpec[S],
    settings: S,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    metrics: bool = True,
    options: HostOptions | None = None,
) -> ServiceHost[S]:
    return await ServiceHost(spec, settings, clock=clock, port=port, metrics=metrics,
                             options=options).start()
