"""The runtime's service-to-service client, between two real example services (A calls
B through `ctx.client`): the caller's own service token, the request id and what is
left of the deadline passed on, and gRPC retries for the methods declared
idempotent only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest_asyncio
from pond.example.v1 import notes_pb2 as pb
from pond.example.v1 import notes_pb2_grpc

from services._example.server import SPEC
from services.runtime.auth import Role, TokenVerifier
from services.runtime.clients import ServiceToken, call_metadata
from services.runtime.clock import ManualClock
from services.runtime.host import ServiceHost, start_service
from tests.conftest import TEST_SECRET, token
from tests.integration.test_host import FAST, settings_for


@pytest_asyncio.fixture
async def caller(tmp_path, redis_url: str, redis) -> AsyncIterator[notes_pb2_grpc.NotesServiceStub]:
    """A's stub; A's client calls B."""
    clock = ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))
    hosts: list[ServiceHost] = []
    try:
        b = await start_service(SPEC, settings_for(tmp_path / "b", redis_url), clock=clock,
                                port=0, metrics=False, options=FAST)
        hosts.append(b)
        a = await start_service(
            SPEC, settings_for(tmp_path / "a", redis_url, example_peer=f"127.0.0.1:{b.port}"),
            clock=clock, port=0, metrics=False, options=FAST,
        )
        hosts.append(a)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel:
            yield notes_pb2_grpc.NotesServiceStub(channel)
    finally:
        for host in reversed(hosts):
            await host.stop(0)


def md(request_id: str = "") -> tuple:
    return call_metadata(token(Role.OPERATOR, "ops-1"), request_id=request_id)


async def test_the_callee_sees_the_callers_service_token_request_id_and_deadline(caller):
    reply = await caller.Forward(
        pb.ForwardRequest(method="Echo", echo=pb.EchoRequest(key="k")),
        metadata=md("req-fwd-1"), timeout=4.0,
    )
    assert not reply.error_code, reply.error_code
    echo = reply.echo
    # A's own identity, not the operator's who called A.
    assert (echo.subject, echo.role) == ("example", "service")
    assert echo.request_id == "req-fwd-1"
    # What was left of A's 4 s, not the client's default 5 s (gRPC's timeout header
    # rounds up, so the callee may see a few milliseconds more).
    assert 0 < echo.deadline_seconds < 4.1


async def test_idempotent_methods_are_retried_by_grpc_and_others_never(caller):
    retried = await caller.Forward(
        pb.ForwardRequest(method="Echo", echo=pb.EchoRequest(key="r", fail_first=2)),
        metadata=md(),
    )
    assert not retried.error_code and retried.echo.attempts == 3
    once = await caller.Forward(
        pb.ForwardRequest(method="EchoOnce", echo=pb.EchoRequest(key="o", fail_first=1)),
        metadata=md(),
    )
    assert once.error_code == "UNAVAILABLE"
    again = await caller.Forward(  # the failed call was made once: this is the second
        pb.ForwardRequest(method="EchoOnce", echo=pb.EchoRequest(key="o")), metadata=md())
    assert again.echo.attempts == 2


def test_the_service_token_is_minted_again_before_it_expires():
    now, minted = [1_000_000.0], []

    def mint(subject: str, ttl: float) -> str:
        minted.append(ServiceToken(TEST_SECRET, subject, ttl_seconds=ttl).get())
        return minted[-1]

    tokens = ServiceToken(TEST_SECRET, "campaign", ttl_seconds=600, now=lambda: now[0],
                          mint=mint)
    first = tokens.get()
    now[0] += 400
    assert tokens.get() == first and len(minted) == 1
    now[0] += 90  # 490 s of 600: less than a fifth is left
    tokens.get()
    assert len(minted) == 2
    caller = TokenVerifier(TEST_SECRET, audience="pond.member").verify(minted[-1])
    assert (caller.subject, caller.role) == ("campaign", Role.SERVICE)
