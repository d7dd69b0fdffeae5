"""A column's timer across a kill -9: the community service as a real process
(`python -m services.community`) writes a column and its timer, is killed with
SIGKILL before the timer fires, starts again, and the post goes out once (one post
in the store, one ColumnPostDue on the stream)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc
from pond.events.v1 import event_pb2

from services.community.events import STREAM
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from tests.conftest import TEST_SECRET, eventually, token

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAME = "pond.community.v1.CommunityService"
WAIT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start(data_dir: Path, redis_url: str, port: int, name: str):
    env = dict(os.environ)
    env.update(
        POND_MODE="embedded", POND_DATA_DIR=str(data_dir), POND_AUTH_SECRET=TEST_SECRET,
        REDIS_URL=redis_url, POND_HOST="127.0.0.1", POND_COMMUNITY_PORT=str(port),
        POND_COMMUNITY_METRICS_PORT=str(_free_port()), POND_OUTBOX_POLL_SECONDS="0.1",
        POND_JOBS_ENABLED="false", POND_COMMUNITY_MEMBER_TARGET="127.0.0.1:9",
        POND_COMMUNITY_TAGGING_TARGET="127.0.0.1:8", POND_LOG_FORMAT="json",
        PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(ROOT / "gen"), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    for var in ("MONGODB_URI", "POND_MONGODB_URI", "POND_COMMUNITY_CALLBACK_PORT"):
        env.pop(var, None)
    log = (data_dir.parent / f"community-{name}.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.community", cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            if process.returncode is not None:
                raise AssertionError("community exited early: "
                                     + (data_dir.parent / f"community-{name}.log").read_text())
            try:
                return (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                           timeout=1)).status
            except grpc.aio.AioRpcError:
                return -1

        await eventually(status, lambda s: s == health_pb2.HealthCheckResponse.SERVING, WAIT,
                         interval=0.05)
    return process


async def kill9(process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), WAIT)


async def test_a_column_timer_written_before_a_kill_9_posts_once_after_the_restart(
        tmp_path, redis_url, redis):
    data_dir = tmp_path / "community"
    data_dir.mkdir()
    port = _free_port()
    md = call_metadata(token(Role.OPERATOR))
    process = await start(data_dir, redis_url, port, "first")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = community_pb2_grpc.CommunityServiceStub(channel)
            await stub.CreateGroup(pb.CreateGroupRequest(group_id="a", group=pb.Group(
                name="Fruit", kind=pb.GROUP_KIND_INTEREST, wecom_chat_id="wrA")), metadata=md)
            when = timestamp_pb2.Timestamp()
            when.FromDatetime(datetime.now(UTC) + timedelta(seconds=3))
            await stub.CreateColumn(pb.CreateColumnRequest(column_id="launch", column=pb.Column(
                title="Launch", content=pb.ColumnContent(text="Durian is here"),
                recurrence=pb.ColumnRecurrence(cadence=pb.COLUMN_CADENCE_ONCE, once_time=when),
                target=pb.ColumnTarget(group_id="a"))), metadata=md)
            listed = await stub.ListColumnPosts(pb.ListColumnPostsRequest(column_id="launch"),
                                                metadata=md)
            assert list(listed.posts) == []  # written, not fired
        await kill9(process)
        process = await start(data_dir, redis_url, port, "second")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = community_pb2_grpc.CommunityServiceStub(channel)

            async def posts() -> list:
                return list((await stub.ListColumnPosts(
                    pb.ListColumnPostsRequest(column_id="launch"), metadata=md)).posts)

            got = await eventually(posts, lambda p: len(p) >= 1, WAIT)
            assert [(p.group_id, p.content.text) for p in got] == [("a", "Durian is here")]
            column = await stub.GetColumn(pb.GetColumnRequest(column_id="launch"), metadata=md)
            assert column.post_count == 1 and not column.HasField("next_post_time")

        async def due_events() -> list:
            return [e for e in (event_pb2.Event.FromString(f[b"e"])
                                for _i, f in await redis.xrange(STREAM))
                    if e.type == "pond.events.v1.ColumnPostDue"]

        events = await eventually(due_events, lambda e: len(e) >= 1, WAIT)
        assert len(events) == 1
    finally:
        await kill9(process)
