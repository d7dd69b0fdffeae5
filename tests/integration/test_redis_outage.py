"""A Redis outage under a running service: the service keeps serving, its metrics
say Redis is unreachable (pond_redis_up 0, seconds counting) while it is, and once
the same server is back the events committed meanwhile go out and flow on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import grpc
from pond.events.v1 import event_pb2
from pond.member.v1 import member_pb2 as mpb
from pond.member.v1 import member_pb2_grpc
from pond.tagging.v1 import tagging_pb2 as tpb
from pond.tagging.v1 import tagging_pb2_grpc

from services.member.server import start_member_service
from services.runtime.redis_conn import EmbeddedValkey, connect_redis
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, MemberHarness, eventually, member_settings

STREAM = "pond.events.member"
RELAY = 'client="outbox:pond.events.member"'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name}{{{re.escape(RELAY)}}} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} for the member relay in:\n{text}"
    return float(match.group(1))


async def test_outage_is_reported_and_events_flow_once_redis_is_back(tmp_path: Path):
    valkey = EmbeddedValkey(tmp_path / "valkey").start()
    metrics_port = _free_port()
    service = await start_member_service(
        member_settings(tmp_path / "member", valkey.url, host="127.0.0.1",
                        member_metrics_port=metrics_port),
        port=0,
    )
    redis = connect_redis(valkey.url)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = member_pb2_grpc.MemberServiceStub(channel)
    md = MemberHarness.md()

    async def metrics() -> str:
        return await asyncio.to_thread(scrape, metrics_port)

    async def event_types() -> list[str]:
        return [event_pb2.Event.FromString(fields[b"e"]).type
                for _id, fields in await redis.xrange(STREAM)]

    try:
        reg = await stub.RegisterMember(mpb.RegisterMemberRequest(identities=[
            mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13800002222")]), metadata=md)
        await eventually(event_types, lambda types: len(types) == 1)
        assert gauge(await metrics(), "pond_redis_up") == 1

        os.kill(valkey.pid, signal.SIGKILL)
        # The service still takes orders: they wait in its outbox.
        await stub.RecordOrder(mpb.RecordOrderRequest(
            order_id="during-outage", member_id=reg.member.id, channel=4, amount_fen=1_000,
            items=[mpb.OrderItem(sku="s", category="c", quantity=1, unit_price_fen=1_000)]),
            metadata=md)
        down = await eventually(metrics, lambda t: gauge(t, "pond_redis_up") == 0)
        assert gauge(down, "pond_redis_unreachable_seconds") > 0

        valkey.start()  # the same port, password and append-only file
        await redis.aclose()
        redis = connect_redis(valkey.url)  # this test's own connection died with the server
        await eventually(metrics, lambda t: gauge(t, "pond_redis_up") == 1)
        types = await eventually(event_types, lambda types: len(types) > 1)
        assert "pond.events.v1.OrderPaid" in types
        assert gauge(await metrics(), "pond_redis_unreachable_seconds") == 0
    finally:
        await channel.close()
        await service.stop(0)
        await redis.aclose()
        valkey.stop()


async def test_services_started_before_redis_catch_up_once_it_is_there(tmp_path: Path):
    """The consumer and relays never give up: started while Redis is down, they wait
    and then carry the events committed meanwhile through to tagging."""
    valkey = EmbeddedValkey(tmp_path / "valkey")  # not started yet
    member = await start_member_service(
        member_settings(tmp_path / "member", valkey.url), port=0, metrics=False
    )
    tagging = await start_tagging_service(
        TaggingSettings(data_dir=tmp_path / "tagging", auth_secret=TEST_SECRET, mode="test",
                        redis_url=valkey.url, outbox_poll_seconds=0.05,
                        tagging_rescore_delay_seconds=0),
        port=0, metrics=False,
    )
    md = MemberHarness.md()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{member.port}") as mch,
            grpc.aio.insecure_channel(f"127.0.0.1:{tagging.port}") as tch,
        ):
            members = member_pb2_grpc.MemberServiceStub(mch)
            reg = await members.RegisterMember(mpb.RegisterMemberRequest(identities=[
                mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13800003333")]), metadata=md)
            await members.RecordOrder(mpb.RecordOrderRequest(
                order_id="before-redis", member_id=reg.member.id, channel=4, amount_fen=1_000,
                items=[mpb.OrderItem(sku="s", category="c", quantity=1, unit_price_fen=1_000)]),
                metadata=md)
            await asyncio.to_thread(valkey.start)
            profiles = tagging_pb2_grpc.TaggingServiceStub(tch)

            async def orders_seen() -> float:
                try:
                    p = await profiles.GetMemberProfile(
                        tpb.GetMemberProfileRequest(member_id=reg.member.id), metadata=md)
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return -1
                return p.features["orders_total"]

            await eventually(orders_seen, lambda n: n == 1)
    finally:
        await tagging.stop(0)
        await member.stop(0)
        valkey.stop()
