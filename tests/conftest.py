"""Shared fixtures: a real Redis-compatible server (embedded Valkey, or REDIS_URL),
a real member service on a free port with SQLite under tmp_path, and tokens."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pond.member.v1 import member_pb2_grpc

from services.member.server import MemberService, start_member_service
from services.member.settings import MemberSettings
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from services.runtime.clock import ManualClock
from services.runtime.logs import configure_logging
from services.runtime.loop import loop_name, new_event_loop
from services.runtime.redis_conn import EmbeddedValkey, connect_redis

TEST_SECRET = "test-secret-" + "x" * 20
TEST_PHONE_KEY = base64.b64encode(b"k" * 32).decode()

configure_logging(os.environ.get("POND_TEST_LOG_LEVEL", "warning"), "json")


def pytest_asyncio_loop_factories(config, item):
    """Tests run on the loop the services run on in production
    (services.runtime.loop): uvloop, or asyncio's own with POND_EVENT_LOOP=asyncio."""
    return {loop_name(): new_event_loop}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_URL when given (CI runs the Redis tests against Debian's redis-server),
    otherwise a private embedded Valkey for the session, with a password like the
    one `make run` starts (the URL carries it)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedValkey(
        tmp_path_factory.mktemp("valkey"), password=secrets.token_urlsafe(24)
    ).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def token(role: Role, subject: str = "tester", ttl: float = 3600) -> str:
    return mint_token(TEST_SECRET, subject, role, ttl)


@dataclass
class MemberHarness:
    service: MemberService
    channel: grpc.aio.Channel
    stub: member_pb2_grpc.MemberServiceStub
    clock: ManualClock

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    @staticmethod
    def md(role: Role = Role.OPERATOR, member_id: str = "") -> tuple:
        return call_metadata(token(role), member_id=member_id)


def member_settings(tmp_path, redis_url: str = "", **overrides) -> MemberSettings:
    env = dict(data_dir=tmp_path, auth_secret=TEST_SECRET, phone_key=TEST_PHONE_KEY,
               redis_url=redis_url, mode="test", outbox_poll_seconds=0.05,
               # Tests move the clock by hand and run the maintenance RPCs themselves.
               jobs_enabled=False)
    env.update(overrides)
    return MemberSettings(**env)


@contextlib.asynccontextmanager
async def member_replicas(
    tmp_path, redis_url: str, count: int, wrap: Callable[[Any], Any] = lambda store: store
) -> AsyncIterator[list[MemberHarness]]:
    """`count` member services (replicas: each with its own process-local state) over
    one database; `wrap` may stand between each and the store (say, networked reads)."""
    from services.member.store import open_store

    clock = ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    settings = member_settings(tmp_path, redis_url)
    harnesses: list[MemberHarness] = []
    try:
        for _ in range(count):
            store = wrap(await open_store(sqlite_path=str(tmp_path / "member.db")))
            service = await start_member_service(settings, clock=clock, port=0, metrics=False,
                                                 store=store)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
            harnesses.append(MemberHarness(
                service, channel, member_pb2_grpc.MemberServiceStub(channel), clock))
        yield harnesses
    finally:
        for h in harnesses:
            await h.channel.close()
            await h.service.stop(0)


@pytest_asyncio.fixture
async def member(tmp_path, redis_url: str, redis) -> AsyncIterator[MemberHarness]:
    """A real member service (grpc.aio, port 0, SQLite, outbox relay to Redis)."""
    clock = ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    service = await start_member_service(member_settings(tmp_path, redis_url), clock=clock,
                                         port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield MemberHarness(service, channel, member_pb2_grpc.MemberServiceStub(channel), clock)
    finally:
        await channel.close()
        await service.stop(0)


@pytest_asyncio.fixture
async def gateway_factory(member: MemberHarness, redis_url: str):
    """Starts gateways (real uvicorn, free port) over the `member` service, each with
    its own WeChat stand-in; settings overrides as keywords. Stopped after the test."""
    from gateway.server import gateway_server
    from stack.wechat_standin import WeChatStandIn
    from tests.gateway_harness import (
        WECHAT_APP_ID,
        WECHAT_APP_SECRET,
        GatewayHarness,
        gateway_settings,
        standin_server,
    )

    started = []

    async def start(**overrides) -> GatewayHarness:
        standin = WeChatStandIn(WECHAT_APP_ID, WECHAT_APP_SECRET,
                                token_ttl_seconds=overrides.pop("wechat_token_ttl", 7200))
        wechat = await standin_server(standin).start()
        started.append(wechat)
        target = overrides.pop("member_target", member.target)
        redis = overrides.pop("redis_url", redis_url)
        settings = gateway_settings(target, redis, wechat.url, TEST_SECRET, **overrides)
        server = await gateway_server(settings, port=0).start()
        started.append(server)
        harness = GatewayHarness(server, standin, httpx.AsyncClient(base_url=server.url),
                                 settings)
        started.append(harness.http)
        return harness

    try:
        yield start
    finally:
        for thing in reversed(started):
            await (thing.aclose() if isinstance(thing, httpx.AsyncClient) else thing.stop())


@pytest_asyncio.fixture
async def gateway(gateway_factory):
    """A gateway over the `member` service (see gateway_factory)."""
    return await gateway_factory()


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 30.0,
    interval: float = 0.02,
) -> T:
    """Polls `probe` until `ok(result)`; fails with the last result after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if ok(result):
            return result
        assert time.monotonic() < deadline, f"condition not met in {timeout}s: {result}"
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], object], timeout: float = 30.0,
               what: str = "condition not met in time") -> None:
    """The synchronous `eventually` (for tests driving other processes): polls
    `condition` until it is true; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that touches Redis is marked `redis`, so CI can rerun exactly those
    against Debian's redis-server."""
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
