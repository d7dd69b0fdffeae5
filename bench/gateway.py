"""`python -m bench.gateway` (part of `make bench`): the gateway's authenticated
`GET /v1/me` against a bare Starlette JSON endpoint on the same uvicorn setup, driven
by the same load generator in the same run, and the gateway's added latency over
calling the member service's GetMember directly.

Processes (each its own, so that on two cores the client and the server under test
each get one): an embedded Valkey (sessions, rate limits, the member's outbox), the
member service (bench.server member: SQLite, as in the dev stack), the gateway
(`python -m gateway`'s app on a free port: real tokens, the Redis admission script per
request, the member client over gRPC), the Starlette baseline and a no-framework
server (bench.http_servers), the load generator (bench.http_load), and this runner,
which also serves the WeChat stand-in the members sign in through.

Schedule: raw (the generator's own ceiling), then starlette, gateway, starlette,
gateway, starlette, fastapi, starlette: each gateway run is divided by the mean of the
Starlette runs right before and after it, and so is the FastAPI floor (a route with
no work: the best any FastAPI gateway could do). Then latency: blocks of
one-at-a-time GetMember calls over gRPC and /v1/me requests through the gateway,
alternated, p50 of each.

Exit status 0 when every request succeeded (a missed goal is reported, not fatal,
unless --strict)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench import report
from bench.gateway_report import Figures, LatencyFigure, table
from bench.load import Remeasuring, RunResult
from bench.procstat import cpu_seconds, find_pid, machine_busy_seconds
from bench.runner import ServerProcess, _server_env
from services.runtime.redis_conn import EmbeddedValkey

WECHAT_APP_ID = "wxbench000000000001"
# Admission still runs its Lua script per request; only the limits never bite.
UNREACHABLE_LIMITS = "auth=1000000000/1000000000/60,read=1000000000/1000000000/60," \
                     "write=1000000000/1000000000/60"
BASELINE_PATH = "/json"
# Runs taken while other work held the machine are measured again, this many in all
# (the quieter of the two attempts is kept), as in `python -m bench`.
RETRIES = 3


@dataclass
class Options:
    duration: float = 5.0
    warmup: float = 1.0
    concurrency: int = 32
    members: int = 200
    latency_calls: int = 2000
    log_level: str = "info"


@dataclass
class Stack:
    member: ServerProcess
    gateway: ServerProcess
    starlette: ServerProcess
    raw: ServerProcess
    fastapi: ServerProcess
    valkey_pid: int | None
    tokens: list[str]
    member_ids: list[str]
    service_token: str
    processes: list[ServerProcess] = field(default_factory=list)


class Generator:
    """The load generator process, driven through JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> Generator:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.http_load", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=report.RESULTS_DIR.parent.parent)
        return cls(proc)

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited")
        return json.loads(line)

    async def command(self, on_window: Any = None, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        while (event := await self._line())["event"] == "window":
            if on_window is not None:
                on_window()
        if "failed" in event:
            raise RuntimeError(f"load generator: {event['failed']}")
        return event

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with_quit = json.dumps({"op": "quit"}) + "\n"
            assert self.proc.stdin is not None
            self.proc.stdin.write(with_quit.encode())
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 10)


async def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become healthy")
            await asyncio.sleep(0.05)


async def _sign_in(url: str, n: int) -> tuple[list[str], list[str]]:
    """n members signed in through the gateway (stand-in WeChat codes)."""
    tag = secrets.token_hex(3)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> dict[str, Any]:
            async with sem:
                reply = await client.post("/v1/auth/wechat-login",
                                          json={"code": f"dev-bench{i}.{tag}"})
                reply.raise_for_status()
                return reply.json()

        pairs = await asyncio.gather(*(one(i) for i in range(n)))
    return [p["access_token"] for p in pairs], [p["member_id"] for p in pairs]


async def start_stack(opts: Options, workdir: Path, valkey: EmbeddedValkey,
                      say: Any) -> tuple[Stack, Any]:
    from gateway.server import EmbeddedServer
    from gateway.settings import GatewaySettings
    from gateway.state import gateway_token
    from stack.wechat_standin import WeChatStandIn

    secret = secrets.token_urlsafe(32)
    phone_key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = _server_env(workdir / "data", valkey.url, secret, phone_key, opts.log_level, {})
    processes: list[ServerProcess] = []
    member = ServerProcess("member", workdir, env).start()
    processes.append(member)
    wechat_secret = secrets.token_urlsafe(16)
    wechat = WeChatStandIn(WECHAT_APP_ID, wechat_secret)
    standin = await EmbeddedServer(wechat.app, uvicorn.Config(
        wechat.app, host="127.0.0.1", port=0, loop="none", lifespan="off", log_config=None,
        access_log=False)).start()
    gateway_env = dict(
        env, POND_MEMBER_TARGET=f"127.0.0.1:{member.port}",
        POND_GATEWAY_TOKEN_SECRET=secrets.token_urlsafe(32), POND_WECHAT_APP_ID=WECHAT_APP_ID,
        POND_WECHAT_APP_SECRET=wechat_secret, POND_WECHAT_API_BASE=standin.url,
        POND_RATE_LIMITS=UNREACHABLE_LIMITS)
    gateway = ServerProcess("gateway", workdir, gateway_env, module="bench.http_servers").start()
    processes.append(gateway)
    await _wait_healthy(f"http://127.0.0.1:{gateway.port}")
    say(f"signing in {opts.members} members through the gateway ...")
    tokens, member_ids = await _sign_in(f"http://127.0.0.1:{gateway.port}", opts.members)
    async with httpx.AsyncClient(timeout=10) as client:
        me = await client.get(f"http://127.0.0.1:{gateway.port}/v1/me",
                              headers={"Authorization": f"Bearer {tokens[0]}"})
        me.raise_for_status()
    body_file = workdir / "me.json"
    body_file.write_text(me.text, encoding="utf-8")
    baseline = ServerProcess("starlette", workdir, env, "--body-file", str(body_file),
                             module="bench.http_servers").start()
    processes.append(baseline)
    raw = ServerProcess("raw", workdir, env, "--body-file", str(body_file),
                        module="bench.http_servers").start()
    processes.append(raw)
    floor = ServerProcess("fastapi", workdir, env, "--body-file", str(body_file),
                          module="bench.http_servers").start()
    processes.append(floor)
    await _wait_healthy(f"http://127.0.0.1:{floor.port}")
    await _wait_healthy(f"http://127.0.0.1:{baseline.port}")
    service_token = gateway_token(GatewaySettings(auth_secret=secret)).get()
    valkey_pid = find_pid("valkey-server", f":{valkey.port}")
    stack = Stack(member, gateway, baseline, raw, floor, valkey_pid, tokens, member_ids,
                  service_token, processes)
    return stack, standin


async def timed_run(gen: Generator, label: str, server: ServerProcess, path: str,
                    stack: Stack, opts: Options) -> RunResult:
    helpers = [p for p in (stack.member.pid, stack.valkey_pid) if p] if label == "gateway" else []
    marks: list[tuple[float | None, float | None, float]] = []

    def window() -> None:
        helper_cpu = sum(cpu_seconds(p) or 0.0 for p in helpers)
        marks.append((cpu_seconds(server.pid), machine_busy_seconds(), helper_cpu))

    result = await gen.command(window, op="throughput", port=server.port, path=path,
                               tokens=stack.tokens, concurrency=opts.concurrency,
                               warmup=opts.warmup, duration=opts.duration)
    (s0, m0, h0), (s1, m1, h1) = marks
    return RunResult(
        label, result["requests"], result["errors"], result["seconds"], result["client_cpu"],
        None if s0 is None or s1 is None else s1 - s0,
        None if m0 is None or m1 is None else m1 - m0, h1 - h0, result["first_error"])


async def latencies(gen: Generator, stack: Stack, opts: Options) -> LatencyFigure:
    blocks = 5
    per_block = max(1, opts.latency_calls // blocks)
    direct: list[float] = []
    through: list[float] = []
    errors = 0
    for _ in range(blocks):
        grpc_result = await gen.command(
            op="grpc_latency", target=f"127.0.0.1:{stack.member.port}",
            token=stack.service_token, member_ids=stack.member_ids, count=per_block)
        http_result = await gen.command(op="latency", port=stack.gateway.port, path="/v1/me",
                                        tokens=stack.tokens, count=per_block)
        direct += grpc_result["latencies_us"]
        through += http_result["latencies_us"]
        errors += http_result["errors"]
    return LatencyFigure(direct, through, errors)


async def measure(opts: Options, workdir: Path, say: Any) -> Figures:
    valkey = EmbeddedValkey(workdir / "valkey").start()
    stack: Stack | None = None
    standin = gen = None
    try:
        stack, standin = await start_stack(opts, workdir, valkey, say)
        gen = await Generator.start()
        runs = []
        schedule = [("raw", stack.raw, BASELINE_PATH), ("starlette", stack.starlette,
                    BASELINE_PATH), ("gateway", stack.gateway, "/v1/me"),
                    ("starlette", stack.starlette, BASELINE_PATH),
                    ("gateway", stack.gateway, "/v1/me"),
                    ("starlette", stack.starlette, BASELINE_PATH),
                    ("fastapi", stack.fastapi, BASELINE_PATH),
                    ("starlette", stack.starlette, BASELINE_PATH)]
        remeasuring = Remeasuring(RETRIES)
        for label, server, path in schedule:

            async def one_run(attempt: int, label=label, server=server, path=path) -> RunResult:
                run = await timed_run(gen, label, server, path, stack, opts)
                say(run.note("requests/s"))
                return run

            runs.append(await remeasuring.quieter(one_run, say))
        say("latency: GetMember over gRPC and GET /v1/me through the gateway, one at a time")
        latency = await latencies(gen, stack, opts)
        return Figures(runs, latency, stack.gateway.error_lines())
    finally:
        if gen is not None:
            await gen.stop()
        if standin is not None:
            await standin.stop()
        for process in reversed(stack.processes if stack else []):
            process.stop()
        valkey.stop()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gateway",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="timed seconds per run (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run (1)")
    p.add_argument("--concurrency", type=int, default=32, help="connections (32)")
    p.add_argument("--members", type=int, default=200, help="members signed in (200)")
    p.add_argument("--latency-calls", type=int, default=2000,
                   help="one-at-a-time calls of each kind for the latency figure (2000)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    opts = Options(args.duration, args.warmup, args.concurrency, args.members,
                   args.latency_calls)
    env = report.environment()
    print(f"Pond gateway bench: {env['cpus']} CPUs, Python {env['python']}; "
          f"{opts.concurrency} connections, {opts.warmup:g} s warm-up + {opts.duration:g} s "
          "per run", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pond-gwbench-") as tmp:
        figures = asyncio.run(measure(opts, Path(tmp), lambda line: print(line, flush=True)))
    print()
    print(table(figures))
    payload = {"when": report.timestamp(), "environment": env, "config": vars(args),
               **figures.as_dict(), "total_seconds": round(time.perf_counter() - started, 1)}
    print(f"written: {report.write_json(payload, 'gateway-latest.json')}")
    failed = sum(r.errors for r in figures.runs) + figures.latency.errors
    if failed or figures.server_errors:
        print(f"\n{failed} requests failed; gateway errors: {figures.server_errors[:3]}",
              file=sys.stderr)
        return 1
    if args.strict and not figures.passed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

