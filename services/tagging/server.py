"""Wiring: settings -> store -> engine -> consumer, relay -> servicer -> server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass

import structlog
from pond.tagging.v1 import tagging_pb2, tagging_pb2_grpc

from services.runtime.clock import Clock, SystemClock
from services.runtime.eventbus import EventConsumer
from services.runtime.outbox import OutboxRelay
from services.runtime.redis_conn import connect_redis
from services.runtime.server import PondServer, ServiceRegistration
from services.tagging.api import AUTH_RULES, TaggingServicer
from services.tagging.app import TaggingApp
from services.tagging.domain.scores import LifecycleThresholds
from services.tagging.engine import TagEngine
from services.tagging.events import CONSUMER_GROUP, MEMBER_STREAM, STREAM
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


@dataclass
class TaggingService:
    server: PondServer
    engine: TagEngine
    app: TaggingApp
    runner: ScoringRunner
    consumer: EventConsumer | None
    _stop: asyncio.Event
    _tasks: list[asyncio.Task]
    servicer: TaggingServicer | None = None
    relay: OutboxRelay | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
        self._stop.set()
        # Scoring runs still going stop before the store closes; like a crash, they
        # keep the run lock and are resumed with StartScoringRun(resume_run_id).
        await self.runner.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.engine.flush()
        if self.consumer is not None:
            await self.consumer.redis.aclose()
        if self.relay is not None:
            await self.relay.redis.aclose()
        await self.engine.store.close()


async def _flush_loop(engine: TagEngine, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        await engine.flush()


async def start_tagging_service(
    settings: TaggingSettings,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    metrics: bool = True,
) -> TaggingService:
    engine = await open_engine(settings, clock)
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = [
        asyncio.create_task(
            _flush_loop(engine, settings.tagging_flush_seconds, stop), name="tagging-flush"
        )
    ]
    relay = consumer = None
    if settings.redis_url:
        redis = connect_redis(settings.redis_url)
        relay = OutboxRelay(
            engine.store.docs, redis, STREAM, poll_seconds=settings.outbox_poll_seconds
        )
        if settings.outbox_relay_enabled:
            tasks.append(asyncio.create_task(relay.run(stop), name="tagging-outbox"))
    runner = ScoringRunner(
        engine,
        partition_timeout=settings.tagging_partition_timeout_seconds,
        rescore_delay=settings.tagging_rescore_delay_seconds,
    )
    app = TaggingApp(
        engine,
        on_commit=relay.notify if relay else (lambda: None),
        on_rules_changed=runner.rescore_soon if runner.rescore_delay > 0 else (lambda: None),
        max_categories=settings.tagging_max_categories,
    )
    if settings.redis_url:
        consumer = EventConsumer(
            connect_redis(settings.redis_url),
            MEMBER_STREAM,
            CONSUMER_GROUP,
            f"{socket.gethostname()}-{os.getpid()}",
            app.handle_member_event,
            max_deliveries=settings.tagging_max_deliveries,
            claim_idle_ms=settings.tagging_claim_idle_ms,
            block_ms=200,
        )
        tasks.append(asyncio.create_task(consumer.run(stop), name="tagging-consumer"))
    servicer = TaggingServicer(app, runner)
    server = PondServer(
        ServiceRegistration(
            SERVICE,
            lambda s: tagging_pb2_grpc.add_TaggingServiceServicer_to_server(servicer, s),
            AUTH_RULES,
        ),
        auth=settings.auth_config(),
        page_key=settings.page_key(),
        host=settings.host,
        port=settings.tagging_port if port is None else port,
        metrics_port=settings.tagging_metrics_port if metrics else 0,
        max_receive_bytes=settings.max_receive_bytes,
        max_concurrent_streams=settings.max_concurrent_streams,
    )
    await server.start()
    return TaggingService(server, engine, app, runner, consumer, stop, tasks, servicer, relay)
