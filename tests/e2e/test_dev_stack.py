"""The dev stack (`python -m stack`, what `make run` starts) seen from outside, as
another user of the machine and as a developer at a second terminal see it: it
listens on loopback only, keeps its files to its owner, never prints a token, wants
a password for its Valkey, restarts that Valkey when it dies (events flow on), runs
its scheduled jobs on the clock rather than at start-up, and its companion commands
(`stack.call`, `stack.token`) use the settings it was started with."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import redis
from pond.member.v1 import member_pb2 as mpb
from pond.member.v1 import member_pb2_grpc
from pond.tagging.v1 import tagging_pb2 as pb
from pond.tagging.v1 import tagging_pb2_grpc
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.runtime.clients import call_metadata
from services.runtime.schedule import next_occurrence
from tests.conftest import wait_until
from tests.e2e.test_stack_journey import _free_port, wait_serving

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

JOBS_INTERVAL = 86400  # daily, at midnight in Asia/Shanghai


def base_env() -> dict[str, str]:
    """This machine's environment without any Pond setting: a fresh terminal."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("POND_") and k not in ("REDIS_URL", "MONGODB_URI")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'gen'}"
    return env


def run_command(
    module: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@dataclass
class DevStack:
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    started_at: datetime
    member_port: int
    tagging_port: int
    member_metrics_port: int
    tagging_metrics_port: int
    valkey_port: int
    gateway_port: int
    wechat_port: int
    community_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text()

    def token(self) -> str:
        return (self.data_dir / "dev-operator.token").read_text().strip()

    def md(self) -> tuple:
        return call_metadata(self.token())

    def client_env(self) -> dict[str, str]:
        """What the banner's `export` line tells a second terminal to set."""
        line = next(line for line in self.log().splitlines()
                    if line.strip().startswith("export "))
        return dict(word.split("=", 1) for word in shlex.split(line.strip())[1:])

    def metrics(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    work = tmp_path_factory.mktemp("devstack")
    data_dir = work / "pond"  # made by the stack
    ports = [_free_port() for _ in range(7)]
    env = base_env()
    env.update(POND_DATA_DIR=str(data_dir), POND_MEMBER_PORT=str(ports[0]),
               POND_TAGGING_PORT=str(ports[1]), POND_MEMBER_METRICS_PORT=str(ports[2]),
               POND_TAGGING_METRICS_PORT=str(ports[3]), POND_VALKEY_PORT=str(ports[4]),
               POND_GATEWAY_PORT=str(ports[5]), POND_WECHAT_STANDIN_PORT=str(ports[6]),
               POND_JOBS_INTERVAL_SECONDS=str(JOBS_INTERVAL), POND_LOG_FORMAT="json")
    log_path = work / "stack.log"
    started_at = datetime.now(UTC)
    community_port = _free_port()
    env.update(POND_COMMUNITY_PORT=str(community_port),
               POND_COMMUNITY_METRICS_PORT=str(_free_port()),
               POND_COMMUNITY_CALLBACK_PORT=str(_free_port()))
    with log_path.open("w") as out:
        # A usual umask: whatever is owner-only is so because the stack made it so.
        proc = subprocess.Popen([sys.executable, "-m", "stack"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, umask=0o022)
    stack = DevStack(proc, data_dir, log_path, started_at, *ports,
                     community_port=community_port)
    try:
        wait_serving(stack.member_port, proc, data_dir)
        wait_serving(stack.tagging_port, proc, data_dir)
        # The banner follows start-up.
        wait_until(lambda: "Gateway  HTTP" in stack.log() or proc.poll() is not None)
        assert proc.poll() is None, stack.log()
        yield stack
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def member_stub(stack: DevStack) -> tuple[grpc.Channel, member_pb2_grpc.MemberServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.member_port}")
    return channel, member_pb2_grpc.MemberServiceStub(channel)


def register(stack: DevStack, phone: str) -> str:
    channel, stub = member_stub(stack)
    with channel:
        return stub.RegisterMember(mpb.RegisterMemberRequest(identities=[
            mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value=phone)]),
            metadata=stack.md(), timeout=10).member.id


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) of the sockets listening on `port`."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # no IPv6 on this machine
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def test_every_port_listens_on_loopback_only(dev_stack: DevStack):
    for port in (dev_stack.member_port, dev_stack.tagging_port, dev_stack.member_metrics_port,
                 dev_stack.tagging_metrics_port, dev_stack.valkey_port, dev_stack.gateway_port,
                 dev_stack.wechat_port):
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on {port}"
        assert addresses <= LOOPBACK, (port, addresses)


def test_data_files_and_folders_are_the_owners_only(dev_stack: DevStack):
    register(dev_stack, "13800000001")  # the databases have their -wal files now
    seen = {p.relative_to(dev_stack.data_dir).as_posix() for p in dev_stack.data_dir.rglob("*")}
    assert {"member.db", "tagging.sqlite", "dev-operator.token", "secrets/auth.secret",
            "secrets/valkey.password", "valkey/appendonlydir"} <= seen, seen
    assert any(name.endswith("-wal") for name in seen), seen
    for path in [dev_stack.data_dir, *dev_stack.data_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_the_banner_names_the_token_file_and_never_prints_a_token(dev_stack: DevStack):
    out = dev_stack.log()
    assert dev_stack.token() not in out
    assert str((dev_stack.data_dir / "dev-operator.token").resolve()) in out
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", out), "a JWT in the log"
    password = (dev_stack.data_dir / "secrets" / "valkey.password").read_text().strip()
    assert password not in out


def test_valkey_refuses_a_forged_event_without_the_password(dev_stack: DevStack):
    anonymous = redis.Redis(port=dev_stack.valkey_port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.xadd("pond.events.member", {b"e": b"forged OrderPaid"})
    anonymous.close()
    password = (dev_stack.data_dir / "secrets" / "valkey.password").read_text().strip()
    with redis.Redis(port=dev_stack.valkey_port, password=password) as owner:
        assert owner.ping()


def test_stack_call_reaches_the_stack_with_the_banners_settings(
    dev_stack: DevStack, tmp_path: Path
):
    member_id = register(dev_stack, "13800000002")
    env = base_env() | dev_stack.client_env()
    assert {"POND_DATA_DIR", "POND_MEMBER_PORT", "POND_TAGGING_PORT"} <= set(env)
    # From another folder, as the banner's commands are run in another terminal.
    got = run_command("stack.call", "GetMember", f'{{"member_id": "{member_id}"}}',
                      env=env, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert member_id in got.stdout
    got = run_command("stack.call", "TaggingService.ListTags", "{}", env=env, cwd=tmp_path)
    assert got.returncode == 0, got.stderr


def test_stack_call_routes_a_member_through_the_community_service(
    dev_stack: DevStack, tmp_path: Path
):
    """The community service runs in the stack, stack.call knows its methods, and it
    reaches the member service for entry rules (a refusal, not UNAVAILABLE)."""
    member_id = register(dev_stack, "13800000003")
    env = base_env() | dev_stack.client_env()
    assert "POND_COMMUNITY_PORT" in env

    def call(method: str, body: str) -> subprocess.CompletedProcess:
        return run_command("stack.call", method, body, env=env, cwd=tmp_path)

    template = '{"name_prefix": "Buyers", "kind": "GROUP_KIND_VIP", "entry_rules":' \
        ' {"must_have_bought": true}}'
    made = call("CreateRoutingRule",
                f'{{"rule_id": "buyers", "rule": {{"name": "b", "template": {template}}}}}')
    assert made.returncode == 0, made.stderr
    refused = call("CommunityService.RouteMember",
                   f'{{"member_id": "{member_id}", "rule_id": "buyers"}}')
    assert refused.returncode == 1 and "ENTRY_PURCHASE_REQUIRED" in refused.stderr
    assert call("CreateRoutingRule", '{"rule_id": "all", "rule": {"name": "all", "template":'
                ' {"kind": "GROUP_KIND_STORE"}}}').returncode == 0
    routed = call("RouteMember", f'{{"member_id": "{member_id}", "rule_id": "all"}}')
    assert routed.returncode == 0, routed.stderr
    assert '"all-1"' in routed.stdout and '"firstJoin": true' in routed.stdout


def test_stack_call_says_what_is_missing(tmp_path: Path):
    no_token = run_command("stack.call", "ListMembers", "{}", env=base_env(), cwd=tmp_path)
    assert no_token.returncode != 0
    assert "make run" in no_token.stderr and "POND_TOKEN" in no_token.stderr
    assert "Traceback" not in no_token.stderr + no_token.stdout
    port = _free_port()
    refused = run_command("stack.call", "ListMembers", "{}", cwd=tmp_path,
                          env=base_env() | {"POND_TOKEN": "t", "POND_MEMBER_PORT": str(port)})
    assert refused.returncode != 0
    assert f"127.0.0.1:{port}" in refused.stderr and "MemberService" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout


def test_stack_token_mints_tokens_the_stack_accepts_for_their_role(
    dev_stack: DevStack, tmp_path: Path
):
    secret_file = dev_stack.data_dir / "secrets" / "auth.secret"
    for settings in ({"POND_DATA_DIR": str(dev_stack.data_dir)},
                     {"POND_AUTH_SECRET_FILE": str(secret_file)}):
        minted = run_command("stack.token", "--role", "guide", "--subject", "pos-17",
                             "--ttl", "3600", env=base_env() | settings, cwd=tmp_path)
        assert minted.returncode == 0, minted.stderr
        guide = call_metadata(minted.stdout.strip())
        channel, stub = member_stub(dev_stack)
        with channel:
            stub.ListMembers(mpb.ListMembersRequest(page_size=1), metadata=guide, timeout=10)
            with pytest.raises(grpc.RpcError) as denied:  # operators and services only
                stub.RefundOrder(mpb.RefundOrderRequest(order_id="o", refund_id="r",
                                                        refund_fen=1), metadata=guide, timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_stack_token_without_a_secret_says_so(tmp_path: Path):
    got = run_command("stack.token", "--role", "guide", "--subject", "pos-17",
                      env=base_env(), cwd=tmp_path)
    assert got.returncode != 0 and not got.stdout
    assert "POND_AUTH_SECRET" in got.stderr and "make run" in got.stderr
    assert "Traceback" not in got.stderr


def test_scheduled_jobs_wait_for_their_time(dev_stack: DevStack):
    first_due = next_occurrence(dev_stack.started_at, JOBS_INTERVAL, "Asia/Shanghai")
    with grpc.insecure_channel(f"127.0.0.1:{dev_stack.tagging_port}") as channel:
        stub = tagging_pb2_grpc.TaggingServiceStub(channel)
        runs = stub.ListScoringRuns(pb.ListScoringRunsRequest(), metadata=dev_stack.md(),
                                    timeout=10).runs
    started = [run.start_time.ToDatetime(tzinfo=UTC) for run in runs]
    assert all(when >= first_due for when in started), (started, first_due)


def test_killed_valkey_is_restarted_and_events_still_reach_tagging(dev_stack: DevStack):
    member_id = register(dev_stack, "13800000003")
    pidfile = dev_stack.data_dir / "valkey" / "valkey.pid"
    old_pid = int(pidfile.read_text())
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> bool:
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return pid != old_pid

    wait_until(restarted)
    channel, stub = member_stub(dev_stack)
    with channel:
        stub.RecordOrder(mpb.RecordOrderRequest(
            order_id="after-kill", member_id=member_id, channel=4, amount_fen=5_000,
            items=[mpb.OrderItem(sku="s", category="fruit", quantity=1, unit_price_fen=5_000)]),
            metadata=dev_stack.md(), timeout=10)
    with grpc.insecure_channel(f"127.0.0.1:{dev_stack.tagging_port}") as tch:
        tagging = tagging_pb2_grpc.TaggingServiceStub(tch)

        def order_seen() -> bool:
            try:
                profile = tagging.GetMemberProfile(pb.GetMemberProfileRequest(
                    member_id=member_id), metadata=dev_stack.md(), timeout=10)
            except grpc.RpcError:
                return False
            return profile.features["orders_total"] == 1

        wait_until(order_seen)
    lines = [line for line in dev_stack.log().splitlines() if "embedded valkey exited" in line]
    assert lines and '"level":"error"' in lines[0]
    wait_until(lambda: 'pond_redis_up{client="consumer:tagging:pond.events.member"} 1.0'
               in dev_stack.metrics(dev_stack.tagging_metrics_port))
    assert dev_stack.proc.poll() is None


@pytest.mark.skipif(shutil.which("curl") is None, reason="the banner's walk-through uses curl")
def test_the_banners_curl_walk_through_signs_in_and_reads_me(dev_stack: DevStack):
    """The gateway's lines of the banner, run as printed: sign in with a stand-in
    code, read /v1/me, bind a phone (WeChat's APIs are the stand-in's), check in
    (the community service behind the gateway)."""
    lines = dev_stack.log().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("LOGIN="))
    script = "\n".join(lines[start:start + 7])
    assert "/v1/me" in script and "/v1/me/phone" in script and "/v1/check-ins" in script
    # Ready: member answers and Redis too (another test here restarts Valkey).
    wait_until(lambda: _status(f"http://127.0.0.1:{dev_stack.gateway_port}/readyz") == 200)
    run = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    me, phone, check_in = (json.loads(doc)
                           for doc in run.stdout.replace("}{", "}\n{").splitlines())
    assert me["id"].startswith("m") and me["tier"]["level"] == 0
    assert phone["me"]["id"] == me["id"] and phone["me"]["phone"] == "138****5678"
    assert check_in["streak"] == 1 and check_in["already_checked_in"] is False
    listening = listening_addresses(dev_stack.gateway_port)
    assert listening and listening <= LOOPBACK


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except OSError:  # refused, or an HTTP error (HTTPError is one)
        return 0
