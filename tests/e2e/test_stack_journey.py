"""The dev stack (`python -m stack`, what `make run` starts) driven as a POS and a
console drive it, in its own process: a member registers, buys, redeems, gets a
refund; the stack restarts and everything is still there."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc

from services.runtime.clients import call_metadata
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(POND_COMMUNITY_PORT=str(_free_port()),
               POND_COMMUNITY_METRICS_PORT=str(_free_port()),
               POND_COMMUNITY_CALLBACK_PORT=str(_free_port()))
    env.update(POND_DATA_DIR=str(data_dir), POND_MEMBER_PORT=str(port),
               POND_MEMBER_METRICS_PORT=str(_free_port()), POND_TAGGING_PORT=str(_free_port()),
               POND_TAGGING_METRICS_PORT=str(_free_port()), POND_HOST="127.0.0.1",
               POND_GATEWAY_PORT=str(_free_port()), POND_WECHAT_STANDIN_PORT=str(_free_port()),
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}", POND_LOG_FORMAT="json")
    return subprocess.Popen([sys.executable, "-m", "stack"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_serving(port: int, proc: subprocess.Popen, data_dir: Path,
                 timeout: float = 60) -> None:
    """The member service answers health checks and the stack has finished starting
    (it writes the dev token after every component is up)."""
    deadline = time.monotonic() + timeout

    def started() -> bool:
        assert proc.poll() is None, proc.stdout.read()
        return (data_dir / "dev-operator.token").exists()

    wait_until(started, timeout, "the stack did not finish starting")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            # wait_for_ready: each try waits (up to its timeout) for the port to open.
            with contextlib.suppress(grpc.RpcError):
                request = health_pb2.HealthCheckRequest()
                if health.Check(request, timeout=1, wait_for_ready=True).status == 1:
                    return
    raise AssertionError("stack did not become healthy")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def test_member_journey_survives_restart(tmp_path: Path):
    port = _free_port()
    proc = start_stack(tmp_path, port)
    try:
        wait_serving(port, proc, tmp_path)
        token = (tmp_path / "dev-operator.token").read_text().strip()
        md = call_metadata(token)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = member_pb2_grpc.MemberServiceStub(channel)
            reg = stub.RegisterMember(pb.RegisterMemberRequest(
                identities=[pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value="13912345678")],
                store_id="store-hz-01", acquisition_channel=4), metadata=md, timeout=5)
            member_id = reg.member.id
            stub.RecordOrder(pb.RecordOrderRequest(
                order_id="pos-1", member_id=member_id, channel=4, amount_fen=25_800,
                items=[pb.OrderItem(sku="cherry-5jin", category="fruit", quantity=1,
                                    unit_price_fen=25_800)]), metadata=md, timeout=5)
            stub.RedeemPoints(pb.RedeemPointsRequest(member_id=member_id, points=58,
                                                     idempotency_key="redeem-1"),
                              metadata=md, timeout=5)
            refund = stub.RefundOrder(pb.RefundOrderRequest(
                order_id="pos-1", refund_id="rf-1", refund_fen=5_800), metadata=md, timeout=5)
            # 258 earned, 58 redeemed, 58 reversed (5,800 of 25,800 fen refunded)
            assert refund.member.points_balance == 258 - 58 - 58
    finally:
        out = stop(proc)
    # The canonical log line names each call; the phone number never appears in clear.
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(line.get("method") == "/pond.member.v1.MemberService/RecordOrder"
               and line.get("code") == "OK" for line in lines)
    assert "13912345678" not in out
    proc = start_stack(tmp_path, port)
    try:
        wait_serving(port, proc, tmp_path)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = member_pb2_grpc.MemberServiceStub(channel)
            again = stub.GetMember(pb.GetMemberRequest(member_id=member_id),
                                   metadata=call_metadata(token), timeout=5)
            assert again.points_balance == 142 and again.total_spent_fen == 20_000
            assert again.identities[0].value == "13912345678"  # decrypts with the kept key
    finally:
        stop(proc)
