"""The tagging service's parts, for the runtime's host (services/runtime/host.py):
the engine over its store, the use cases, servicer and auth rules, the member stream
it consumes, the stream it publishes, the nightly scoring run and the bitmap flush."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import time
from typing import Any

import structlog
from pond.tagging.v1 import tagging_pb2, tagging_pb2_grpc

from services.runtime.clock import Clock, SystemClock
from services.runtime.errors import PondError
from services.runtime.events import EventHandlers
from services.runtime.host import (
    Consumer,
    HostContext,
    Service,
    ServiceSpec,
    start_service,
)
from services.runtime.hosted import HostedService
from services.runtime.jobs import Job
from services.runtime.schedule import Schedule
from services.runtime.server import ServiceRegistration
from services.runtime.supervision import Task
from services.tagging.api import AUTH_RULES, TaggingServicer
from services.tagging.app import TaggingApp
from services.tagging.domain.scores import LifecycleThresholds
from services.tagging.engine import TagEngine
from services.tagging.events import COMMUNITY_STREAM, CONSUMER_GROUP, MEMBER_STREAM, STREAM
from services.tagging.runs import ScoringRunner
from services.tagging.settings import TaggingSettings
from services.tagging.store import SQLITE_FILE, TaggingStore, open_store

SERVICE = tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"]
LEGACY_SQLITE_FILE = "tagging.db"  # the layout before the document store: not read
log = structlog.get_logger("pond.tagging")


async def open_engine(
    settings: TaggingSettings, clock: Clock | None = None, store: TaggingStore | None = None
) -> TagEngine:
    if store is None and not settings.mongodb_uri:
        _warn_of_legacy_file(settings)
    store = store or await open_store(
        sqlite_path=str(settings.data_dir / SQLITE_FILE),
        mongodb_uri=settings.mongodb_uri,
        mongodb_db=settings.mongodb_db,
    )
    engine = TagEngine(
        store,
        clock or SystemClock(),
        timezone=settings.timezone,
        thresholds=LifecycleThresholds(
            settings.lifecycle_new_days,
            settings.lifecycle_active_days,
            settings.lifecycle_sleeping_days,
        ),
    )
    await engine.load()
    return engine


def _warn_of_legacy_file(settings: TaggingSettings) -> None:
    legacy = settings.data_dir / LEGACY_SQLITE_FILE
    if legacy.exists():
        log.warning(
            "tagging's data from before the document store is not migrated (tagging keeps"
            f" its data in {SQLITE_FILE}); remove the old file, or start afresh with make clean",
            ignored=str(legacy),
        )


def scoring_job(runner: ScoringRunner) -> Callable[[], Coroutine[Any, Any, str]]:
    """A full scoring run; one already in progress (an operator's) counts."""

    async def run() -> str:
        try:
            run = await runner.begin()
        except PondError as exc:
            if exc.reason == "RUN_IN_PROGRESS":
                return f"a run is in progress: {exc.metadata.get('run_id', '')}"
            raise
        await runner.execute(run.id)
        return run.id

    return run


def flush_loop(engine: TagEngine, every: float) -> Callable[[asyncio.Event], Awaitable[None]]:
    """Persists the bitmaps changed in real time every `every` seconds."""

    async def run(stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return  # the last flush is the host's, among the closers
            await engine.flush()

    return run


async def build(ctx: HostContext[TaggingSettings]) -> Service:
    settings = ctx.settings
    engine = await open_engine(settings, ctx.clock)
    runner = ScoringRunner(
        engine,
        partition_timeout=settings.tagging_partition_timeout_seconds,
        rescore_delay=settings.tagging_rescore_delay_seconds,
    )
    app = TaggingApp(
        engine,
        on_commit=ctx.notify_commit,
        on_rules_changed=runner.rescore_soon if runner.rescore_delay > 0 else (lambda: None),
        max_categories=settings.tagging_max_categories,
    )
    servicer = TaggingServicer(app, runner)
    return Service(
        registration=ServiceRegistration(
            SERVICE,
            lambda s: tagging_pb2_grpc.add_TaggingServiceServicer_to_server(servicer, s),
            AUTH_RULES,
        ),
        publishes=STREAM,
        store=engine.store.docs,
        consumers=[Consumer(
            stream,
            handlers(EventHandlers(CONSUMER_GROUP, engine.store.docs, ctx.clock)),
            group=CONSUMER_GROUP,
            max_deliveries=settings.tagging_max_deliveries,
            claim_idle_ms=settings.tagging_claim_idle_ms, block_ms=200,
        ) for stream, handlers in ((MEMBER_STREAM, app.member_event_handlers),
                                   (COMMUNITY_STREAM, app.community_event_handlers))],
        jobs=[Job("scoring-run", Schedule.daily(time(4, 0)), scoring_job(runner),
                  lease_seconds=60)],
        tasks=[Task("flush", flush_loop(engine, settings.tagging_flush_seconds))],
        # Scoring runs still going stop before the store closes; like a crash, they
        # keep the run lock and are resumed with StartScoringRun(resume_run_id).
        closers=[runner.close, engine.flush, engine.store.close],
        handle=TaggingParts(engine, runner, app, servicer),
    )


SPEC = ServiceSpec(
    name="tagging",
    settings=TaggingSettings,
    build=build,
    port=lambda s: s.tagging_port,
    metrics_port=lambda s: s.tagging_metrics_port,
)


@dataclass
class TaggingParts:
    engine: TagEngine
    runner: ScoringRunner
    app: TaggingApp
    servicer: TaggingServicer


class TaggingService(HostedService):
    """A running tagging service (what tests and benchmarks hold)."""

    @property
    def parts(self) -> TaggingParts:
        return self.handle

    @property
    def engine(self) -> TagEngine:
        return self.parts.engine

    @property
    def runner(self) -> ScoringRunner:
        return self.parts.runner

    @property
    def app(self) -> TaggingApp:
        return self.parts.app


async def start_tagging_service(
    settings: TaggingSettings,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    metrics: bool = True,
) -> TaggingService:
    return TaggingService(
        await start_service(SPEC, settings, clock=clock, port=port, metrics=metrics)
    )
