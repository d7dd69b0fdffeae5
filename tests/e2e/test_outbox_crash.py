"""The member service as a real process (`python -m services.member`): a service
killed between a state change and its publish still publishes (the outbox), and a
SIGTERM'd service drains and exits 0 (and should tell health watchers NOT_SERVING)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pond.common.v1 import common_pb2
from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as ev
from pond.member.v1 import member_pb2, member_pb2_grpc

from services.member.events import STREAM
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from tests.conftest import TEST_PHONE_KEY, TEST_SECRET, eventually, token

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAME = "pond.member.v1.MemberService"
START_SECONDS = 30.0
WAIT_SECONDS = 15.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_file(path: Path):
    return path.open("ab")


@dataclass
class MemberProcess:
    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def start_member_process(
    data_dir: Path, redis_url: str, *, relay: bool, name: str,
) -> MemberProcess:
    port, metrics_port = _free_port(), _free_port()
    env = dict(os.environ)
    env.update(
        POND_MODE="embedded", POND_DATA_DIR=str(data_dir), POND_AUTH_SECRET=TEST_SECRET,
        POND_PHONE_KEY=TEST_PHONE_KEY, REDIS_URL=redis_url, POND_MEMBER_PORT=str(port),
        POND_MEMBER_METRICS_PORT=str(metrics_port), POND_HOST="127.0.0.1",
        POND_OUTBOX_RELAY_ENABLED="true" if relay else "false", POND_OUTBOX_POLL_SECONDS="0.1",
        POND_SHUTDOWN_GRACE="5", POND_LOG_LEVEL="info", POND_LOG_FORMAT="json",
        PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / "gen"), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    env.pop("MONGODB_URI", None)
    env.pop("POND_MONGODB_URI", None)
    log_path = data_dir.parent / f"{data_dir.name}-{name}.log"
    with _log_file(log_path) as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.member", cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )
    member = MemberProcess(process, port, log_path)
    try:
        await wait_serving(member)
    except BaseException:
        await kill(member)
        raise
    return member


async def wait_serving(member: MemberProcess) -> None:
    """Until the member service's own health status is SERVING (the overall "" status
    reads SERVING from the moment the port accepts, before the service is wired)."""
    async with grpc.aio.insecure_channel(member.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            if member.process.returncode is not None:
                raise AssertionError(f"member service exited early:\n{member.log()}")
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
                return reply.status
            except grpc.aio.AioRpcError:
                return -1

        try:
            await eventually(status, lambda s: s == SERVING, START_SECONDS, interval=0.05)
        except AssertionError as exc:  # say why: the service's own log
            raise AssertionError(f"{exc}; the member service's log:\n{member.log()}") from exc


async def kill(member: MemberProcess) -> None:
    if member.process.returncode is None:
        member.process.kill()
        await asyncio.wait_for(member.process.wait(), WAIT_SECONDS)


@asynccontextmanager
async def running(data_dir: Path, redis_url: str, *, relay: bool, name: str,
                  ) -> AsyncIterator[MemberProcess]:
    member = await start_member_process(data_dir, redis_url, relay=relay, name=name)
    try:
        yield member
    finally:
        await kill(member)


def md() -> tuple:
    return call_metadata(token(Role.OPERATOR))


async def read_events(redis: aioredis.Redis) -> list[event_pb2.Event]:
    return [event_pb2.Event.FromString(fields[b"e"])
            for _id, fields in await redis.xrange(STREAM)]


def order_paid(events: list[event_pb2.Event], order_id: str) -> list[ev.OrderPaid]:
    found = []
    for event in events:
        if event.type == "pond.events.v1.OrderPaid":
            payload = ev.OrderPaid()
            assert event.payload.Unpack(payload)
            if payload.order_id == order_id:
                found.append(payload)
    return found


def registered(events: list[event_pb2.Event], member_id: str) -> list[ev.MemberRegistered]:
    found = []
    for event in events:
        if event.type == "pond.events.v1.MemberRegistered":
            payload = ev.MemberRegistered()
            assert event.payload.Unpack(payload)
            if payload.member_id == member_id:
                found.append(payload)
    return found


async def wait_for_events(redis: aioredis.Redis, ready) -> list[event_pb2.Event]:
    return await eventually(lambda: read_events(redis), ready, WAIT_SECONDS, interval=0.05)


def order_request(order_id: str, member_id: str, fen: int) -> member_pb2.RecordOrderRequest:
    return member_pb2.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=common_pb2.CHANNEL_STORE_POS,
        store_id="s1", amount_fen=fen,
        items=[member_pb2.OrderItem(sku="tea-1", category="tea", quantity=1,
                                    unit_price_fen=fen)])


async def test_killed_between_state_change_and_publish_still_publishes(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis,
) -> None:
    data_dir = tmp_path / "member"

    # 1. Relay off: the state changes commit, their events stay in the outbox - the
    #    window a crash between commit and publish would leave open.
    async with running(data_dir, redis_url, relay=False, name="first") as first:
        async with grpc.aio.insecure_channel(first.target) as channel:
            stub = member_pb2_grpc.MemberServiceStub(channel)
            reply = await stub.RegisterMember(member_pb2.RegisterMemberRequest(
                identities=[member_pb2.Identity(kind=member_pb2.IDENTITY_KIND_PHONE,
                                                value="13800138000")],
                store_id="s1", acquisition_channel=common_pb2.CHANNEL_STORE_POS,
            ), metadata=md(), timeout=10)
            assert reply.created
            member_id = reply.member.id
            paid = await stub.RecordOrder(order_request("order-1", member_id, 12_800),
                                          metadata=md(), timeout=10)
            assert paid.order.points_earned == 128
            assert paid.member.points_balance == 128
        assert await redis.xlen(STREAM) == 0
        first.process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(first.process.wait(), WAIT_SECONDS) == -signal.SIGKILL
        assert await redis.xlen(STREAM) == 0

    # 2. Restarted on the same data with the relay on: the outbox is published.
    async with running(data_dir, redis_url, relay=True, name="second") as second:
        events = await wait_for_events(
            redis, lambda es: registered(es, member_id) and order_paid(es, "order-1"))
        async with grpc.aio.insecure_channel(second.target) as channel:
            stub = member_pb2_grpc.MemberServiceStub(channel)
            got = await stub.GetMember(member_pb2.GetMemberRequest(member_id=member_id),
                                       metadata=md(), timeout=10)
            assert got.points_balance == 128
            assert got.paid_order_count == 1
            assert got.total_spent_fen == 12_800

            # A later change flows through the same relay; once its event is out,
            # everything before it has been published and marked, so counting the
            # earlier events now cannot miss a late duplicate.
            await stub.RecordOrder(order_request("order-2", member_id, 1_000),
                                   metadata=md(), timeout=10)
        events = await wait_for_events(redis, lambda es: order_paid(es, "order-2"))

    assert len(registered(events, member_id)) == 1
    [order] = order_paid(events, "order-1")
    assert (order.member_id, order.amount_fen, order.points_earned) == (member_id, 12_800, 128)
    assert len(order_paid(events, "order-2")) == 1
    assert len({e.id for e in events}) == len(events)  # no event published twice
    assert all(e.producer == "member" for e in events)
    assert {e.subject_id for e in events} == {member_id}


async def test_sigterm_drains_and_exits_zero(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis,
) -> None:
    async with running(tmp_path / "member", redis_url, relay=True, name="term") as member:
        member.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(member.process.wait(), WAIT_SECONDS)
        log = member.log()
        assert returncode == 0, log
        assert '"shutting down"' in log and '"stopped"' in log
        assert '"level": "error"' not in log  # the relay and server stopped cleanly

        async with grpc.aio.insecure_channel(member.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_sigterm_is_announced_as_not_serving_to_watchers(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis,
) -> None:
    async with running(tmp_path / "member", redis_url, relay=True, name="watch") as member:
        async with grpc.aio.insecure_channel(member.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            first = await asyncio.wait_for(watch.read(), WAIT_SECONDS)
            assert first.status == SERVING

            member.process.send_signal(signal.SIGTERM)
            changed = await asyncio.wait_for(watch.read(), WAIT_SECONDS)
            assert changed.status == NOT_SERVING
            watch.cancel()  # the watch is the only call in flight; let the drain end

        returncode = await asyncio.wait_for(member.process.wait(), WAIT_SECONDS)
        assert returncode == 0, member.log()
