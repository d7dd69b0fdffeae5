"""Orchestration: a temporary data directory, an embedded Valkey, the member and
echo server processes, seeding, then the interleaved timed runs."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import secrets
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc

from bench import workload
from bench.load import Remeasuring, RunResult, closed_loop
from bench.procstat import find_pid
from bench.server import ECHO_METHOD
from services.member.events import STREAM
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from services.runtime.redis_conn import EmbeddedValkey, connect_redis

ROOT = Path(__file__).resolve().parent.parent
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 << 20)]


@dataclass
class Options:
    duration: float = 5.0
    warmup: float = 1.0
    concurrency: int = 64
    members: int = 5_000
    seed: int = 20260301
    profile_dir: Path | None = None
    log_level: str = "info"
    # Extra POND_* settings for the member server, for what-if runs (--server-env).
    server_env: dict[str, str] = field(default_factory=dict)
    # A Python file run in the member server before it starts (--server-patch).
    server_patch: str = ""

    @property
    def relay_enabled(self) -> bool:
        value = self.server_env.get("POND_OUTBOX_RELAY_ENABLED", "true")
        return value.lower() not in ("0", "false", "no", "off")


class ServerProcess:
    """One `python -m bench.server` child (or another server module's); its port
    arrives through a file."""

    def __init__(
        self, kind: str, workdir: Path, env: dict[str, str], *extra: str,
        module: str = "bench.server",
    ) -> None:
        self.kind, self.workdir = kind, workdir
        self.port_file = workdir / f"{kind}.port"
        self.stderr_path = workdir / f"{kind}.stderr"
        self.stdout_path = workdir / f"{kind}.log"
        self.args = [
            sys.executable,
            "-m",
            module,
            kind,
            "--port-file",
            str(self.port_file),
            *extra,
        ]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} server did not start:\n{self.stderr_tail()}")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def error_lines(self, limit: int = 5) -> list[str]:
        """Log lines at error level (the service logs JSON to its stdout file)."""
        found = []
        with open(self.stdout_path, errors="replace") as f:
            for line in f:
                if '"level": "error"' in line or '"level":"error"' in line:
                    found.append(line.strip())
                    if len(found) >= limit:
                        break
        return found


async def shut_down(channels: list[grpc.aio.Channel], servers: list[ServerProcess],
                    valkey: EmbeddedValkey) -> None:
    """The end of a bench run: its channels closed, its servers stopped (the last
    started first) and its Valkey."""
    for channel in channels:
        await channel.close()
    for server in reversed(servers):
        server.stop()
    valkey.stop()


def _server_env(
    data_dir: Path,
    redis_url: str,
    secret: str,
    phone_key: str,
    log_level: str,
    extra: dict[str, str],
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("POND_") or k == "POND_EVENT_LOOP")
        and k not in ("MONGODB_URI", "REDIS_URL")
    }
    env.update(
        POND_DATA_DIR=str(data_dir),
        POND_MODE="embedded",
        POND_HOST="127.0.0.1",
        POND_AUTH_SECRET=secret,
        POND_PHONE_KEY=phone_key,
        REDIS_URL=redis_url,
        POND_LOG_LEVEL=log_level,
        POND_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def _outbox_pending(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        # The document store's outbox (services/runtime/documents_sqlite_tables.py).
        return conn.execute('SELECT COUNT(*) FROM "_outbox"').fetchone()[0]


async def wait_outbox_drained(db: Path, enabled: bool = True, timeout: float = 60.0) -> float:
    """Waits until the relay has published every event; returns the seconds it took.
    The next timed run then starts without the relay's backlog in the server."""
    start = time.monotonic()
    if not enabled:
        return 0.0
    while _outbox_pending(db):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"the outbox did not drain in {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def seed_members(
    stub: member_pb2_grpc.MemberServiceStub,
    metadata: tuple,
    n: int,
    concurrency: int,
    rng: random.Random,
) -> list[str]:
    requests = [workload.register_request(i, rng) for i in range(n)]
    ids: list[str] = []
    cursor = iter(requests)

    async def worker() -> None:
        for request in cursor:
            response = await stub.RegisterMember(request, metadata=metadata, timeout=30)
            ids.append(response.member.id)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


@dataclass
class Measured:
    runs: list[RunResult]
    seed_seconds: float
    members: int
    echo_response_bytes: int
    outbox_drain_seconds: float
    events_on_stream: int
    server_errors: list[str]
    windows: list = field(default_factory=list)  # bench.profiling.Window, with --profile


def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


# Runs taken while other work held the machine are measured again, this many in all.
RETRIES = 3


async def _timed_runs(
    opts: Options, targets: dict, metadata: tuple, db: Path, helper_pids: tuple[int, ...], say
) -> tuple[list[RunResult], list, float]:
    """echo, GetMember, echo, RecordOrder, echo: each member run sits between two
    echo runs, so drifts in the machine's speed hit both sides of its ratio. A run
    during which other processes took the machine is measured once more (up to
    RETRIES times per bench) and the quieter of the two attempts kept."""
    runs: list[RunResult] = []
    windows = []
    drain = 0.0
    remeasuring = Remeasuring(0 if opts.profile_dir else RETRIES)
    for label in ("echo", "GetMember", "echo", "RecordOrder", "echo"):
        # Bound as defaults: each iteration's own target, though measure runs within it.
        async def one_run(attempt: int, label: str = label,
                          target: tuple = targets[label]) -> RunResult:
            nonlocal drain
            server, method, make = target
            hooks = None
            if opts.profile_dir:
                from bench.profiling import Window

                windows.append(window := Window(label, server.pid, server.signal))
                hooks = (window.start, window.stop)
            result = await closed_loop(
                label,
                method,
                make,
                metadata,
                concurrency=opts.concurrency,
                warmup=opts.warmup,
                duration=opts.duration,
                server_pid=server.pid,
                helper_pids=helper_pids,
                on_window=hooks,
            )
            say(result.note("calls/s"))
            if server.kind == "member":
                drain = max(drain, await wait_outbox_drained(db, opts.relay_enabled))
            return result

        runs.append(await remeasuring.quieter(one_run, say))
    return runs, windows, drain


async def measure(opts: Options, workdir: Path, say) -> Measured:
    rng = random.Random(opts.seed)
    secret = secrets.token_urlsafe(32)
    phone_key = base64.b64encode(secrets.token_bytes(32)).decode()
    data_dir = workdir / "data"
    db = data_dir / "member.db"
    valkey = EmbeddedValkey(workdir / "valkey").start()
    servers: list[ServerProcess] = []
    channels: list[grpc.aio.Channel] = []

    def profile_args(kind: str) -> tuple[str, ...]:
        if not opts.profile_dir:
            return ()
        (opts.profile_dir / kind).mkdir(parents=True, exist_ok=True)
        return ("--profile", str(opts.profile_dir / kind))

    try:
        env = _server_env(data_dir, valkey.url, secret, phone_key, opts.log_level, opts.server_env)
        patch = ("--patch", str(Path(opts.server_patch).resolve())) if opts.server_patch else ()
        member = ServerProcess("member", workdir, env, *patch, *profile_args("member")).start()
        servers.append(member)
        channels.append(channel := _channel(member.port))
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = member_pb2_grpc.MemberServiceStub(channel)
        metadata = call_metadata(mint_token(secret, "bench-operator", Role.OPERATOR))

        say(f"seeding {opts.members:,} members through RegisterMember ...")
        t0 = time.perf_counter()
        ids = await seed_members(stub, metadata, opts.members, opts.concurrency, rng)
        seed_seconds = time.perf_counter() - t0
        await wait_outbox_drained(db, opts.relay_enabled)
        say(f"  {len(ids):,} members in {seed_seconds:.1f} s")

        # The echo server answers with a real seeded member (plus purchase fields).
        real = await stub.GetMember(pb.GetMemberRequest(member_id=ids[0]), metadata=metadata)
        answer = workload.echo_member(real)
        response_file = workdir / "echo-response.bin"
        response_file.write_bytes(answer.SerializeToString())
        echo = ServerProcess(
            "echo", workdir, env, "--response-file", str(response_file), *profile_args("echo")
        ).start()
        servers.append(echo)
        channels.append(echo_channel := _channel(echo.port))
        await asyncio.wait_for(echo_channel.channel_ready(), 30)
        # _registered_method as the generated stubs pass it, so both sides cost the same.
        echo_call = echo_channel.unary_unary(
            ECHO_METHOD,
            request_serializer=pb.GetMemberRequest.SerializeToString,
            response_deserializer=pb.Member.FromString,
            _registered_method=True,
        )

        targets = {
            "echo": (echo, echo_call, workload.get_member_requests(ids, rng)),
            "GetMember": (member, stub.GetMember, workload.get_member_requests(ids, rng)),
            "RecordOrder": (
                member,
                stub.RecordOrder,
                workload.record_order_requests(ids, rng, secrets.token_hex(3)),
            ),
        }
        valkey_pid = find_pid("valkey-server", f":{valkey.port}")
        helpers = (valkey_pid,) if valkey_pid else ()
        runs, windows, drain = await _timed_runs(opts, targets, metadata, db, helpers, say)
        redis = connect_redis(valkey.url)
        try:
            events = await redis.xlen(STREAM)
        finally:
            await redis.aclose()
        return Measured(
            runs,
            seed_seconds,
            len(ids),
            answer.ByteSize(),
            drain,
            events,
            member.error_lines(),
            windows,
        )
    finally:
        await shut_down(channels, servers, valkey)
