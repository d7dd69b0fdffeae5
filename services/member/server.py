"""Wiring: settings -> store -> bus -> use cases -> servicer -> server."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from pond.member.v1 import member_pb2, member_pb2_grpc

from services.member.access import AUTH_RULES, GATEWAY_BEFORE_SIGN_IN
from services.member.api import MemberServicer
from services.member.app import MemberApp
from services.member.events import STREAM
from services.member.service import LoyaltyRules
from services.member.settings import MemberSettings
from services.member.store import MemberStore, open_store
from services.runtime.clock import Clock, SystemClock
from services.runtime.crypto import FieldCipher
from services.runtime.outbox import OutboxRelay
from services.runtime.redis_conn import connect_redis
from services.runtime.server import PondServer, ServiceRegistration

SERVICE = member_pb2.DESCRIPTOR.services_by_name["MemberService"]


def registration(servicer: MemberServicer) -> ServiceRegistration:
    return ServiceRegistration(
        descriptor=SERVICE,
        add_to_server=lambda server: member_pb2_grpc.add_MemberServiceServicer_to_server(
            servicer, server
        ),
        rules=AUTH_RULES,
        gateway_before_sign_in=GATEWAY_BEFORE_SIGN_IN,
    )


@dataclass
class MemberService:
    """A running member service: its server, store, app and outbox relay."""

    server: PondServer
    store: MemberStore
    app: MemberApp
    relay: OutboxRelay | None
    _stop: asyncio.Event
    _tasks: list[asyncio.Task]

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.relay is not None:
            await self.relay.redis.aclose()
        await self.store.close()


async def start_member_service(
    settings: MemberSettings,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    metrics: bool = True,
    store: MemberStore | None = None,
) -> MemberService:
    key = settings.phone_key_b64()
    if not key:
        raise RuntimeError("refusing to start without a phone encryption key (POND_PHONE_KEY)")
    store = store or await open_store(
        sqlite_path=str(settings.data_dir / "member.db"),
        mongodb_uri=settings.mongodb_uri,
        mongodb_db=settings.mongodb_db,
    )
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    relay = None
    if settings.redis_url:
        relay = OutboxRelay(
            store.docs,
            connect_redis(settings.redis_url),
            STREAM,
            poll_seconds=settings.outbox_poll_seconds,
        )
        if settings.outbox_relay_enabled:
            tasks.append(asyncio.create_task(relay.run(stop), name="member-outbox"))
    rules = LoyaltyRules(
        settings.consuming_order_threshold,
        settings.points_per_yuan,
        settings.growth_per_yuan,
        settings.points_valid_days,
        settings.timezone,
    )
    app = MemberApp(
        store,
        clock or SystemClock(),
        FieldCipher.from_b64(key),
        rules,
        on_commit=relay.notify if relay else (lambda: None),
        idempotency_retention=timedelta(days=settings.idempotency_retention_days),
    )
    server = PondServer(
        registration(MemberServicer(app)),
        secret=settings.secret(),
        host=settings.host,
        port=settings.member_port if port is None else port,
        metrics_port=settings.member_metrics_port if metrics else 0,
    )
    await server.start()
    return MemberService(server, store, app, relay, stop, tasks)
