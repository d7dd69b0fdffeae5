"""The community service as a real process (`python -m services.community`): a chain
whose deadline passes while the process is dead (SIGKILL) is closed by its timer after
the restart, with its order list."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc

from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from tests.conftest import TEST_SECRET, eventually, token

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAME = "pond.community.v1.CommunityService"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start(data_dir: Path, redis_url: str, port: int) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env.update(
        POND_MODE="embedded", POND_DATA_DIR=str(data_dir), POND_AUTH_SECRET=TEST_SECRET,
        REDIS_URL=redis_url, POND_HOST="127.0.0.1", POND_COMMUNITY_PORT=str(port),
        POND_COMMUNITY_METRICS_PORT="0", POND_OUTBOX_POLL_SECONDS="0.05",
        POND_LOG_FORMAT="json", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    )
    for name in ("MONGODB_URI", "POND_MONGODB_URI", "POND_JOBS_INTERVAL_SECONDS"):
        env.pop(name, None)
    with (data_dir.parent / "community.log").open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.community", cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            assert process.returncode is None, "the community service exited early"
            try:
                return (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                           timeout=1)).status
            except grpc.aio.AioRpcError:
                return -1

        await eventually(status, lambda s: s == health_pb2.HealthCheckResponse.SERVING, 30,
                         interval=0.05)
    return process


async def test_a_chain_deadline_passed_during_a_kill_closes_after_the_restart(
        tmp_path: Path, redis_url: str):
    data_dir, port = tmp_path / "pond", _free_port()
    md = call_metadata(token(Role.OPERATOR))
    process = await start(data_dir, redis_url, port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = community_pb2_grpc.CommunityServiceStub(channel)
            await stub.CreateGroup(pb.CreateGroupRequest(group_id="a", group=pb.Group(
                name="a", kind=pb.GROUP_KIND_INTEREST)), metadata=md)
            deadline = timestamp_pb2.Timestamp()
            deadline.FromNanoseconds(time.time_ns() + 2_000_000_000)
            await stub.OpenChain(pb.OpenChainRequest(
                chain_id="c", group_id="a", product="Cherries", price_fen=100, stock=9,
                deadline=deadline), metadata=md)
            await stub.JoinChain(pb.JoinChainRequest(chain_id="c", member_id="m1", quantity=2,
                                                     idempotency_key="k"), metadata=md)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def past_deadline() -> float:
        return time.time_ns() - deadline.ToNanoseconds()

    await eventually(past_deadline, lambda late: late > 200_000_000, 10, interval=0.1)
    process = await start(data_dir, redis_url, port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = community_pb2_grpc.CommunityServiceStub(channel)

            async def chain() -> pb.Chain:
                return await stub.GetChain(pb.GetChainRequest(chain_id="c"), metadata=md)

            closed = await eventually(chain, lambda c: c.state == pb.CHAIN_STATE_CLOSED, 20)
            assert closed.closed_by == "deadline"
            assert [(e.member_id, e.quantity) for e in closed.entries] == [("m1", 2)]
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
