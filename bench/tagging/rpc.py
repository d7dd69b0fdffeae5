"""The tagging service over gRPC, with the full state loaded: CheckMembership
throughput against the bare grpc.aio echo server, and the time from an order to
the member's segment membership changing.

Processes: this one is the client (bench.load.closed_loop, the member bench's
load generator); the tagging service (bench.tagging.server, on the database a
full run left), the member service and the echo server (bench.server) each run in
their own, with an embedded Valkey carrying the events between them.

CheckMembership: a random member of the brand and three segments per call, with a
service token (as the campaign service would call it). The echo server answers a
message of the same size as the real response, is driven by the same client with
the same metadata, and runs before and after each CheckMembership window; each
window's calls/s is divided by the mean of the echo windows around it.

Event to segment: new members register through the member service (their
MemberRegistered event reaches tagging, which puts them in the new_members segment),
then, one at a time, each records a first order through RecordOrder; the clock
runs from sending RecordOrder until CheckMembership (polled every 2 ms) shows the
member in new_buyers: the member service's commit, its outbox relay, the stream,
tagging's consumer, the real-time rescore and commit, and the next poll. Baseline:
the bare transport the path needs (two echo round trips and one stream hop, XADD to
a blocked XREAD), measured in the same run."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import secrets
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pond.common.v1 import common_pb2
from pond.member.v1 import member_pb2 as mpb
from pond.member.v1 import member_pb2_grpc
from pond.tagging.v1 import tagging_pb2 as tpb
from pond.tagging.v1 import tagging_pb2_grpc

from bench import workload
from bench.load import RunResult, closed_loop
from bench.runner import CHANNEL_OPTIONS, ServerProcess, shut_down
from bench.server import ECHO_METHOD
from bench.tagging.brand import CATEGORIES, CHECKED_SEGMENTS, FIRST_ORDER_SEGMENT
from bench.tagging.synth import member_id
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from services.runtime.redis_conn import EmbeddedValkey, connect_redis
from services.tagging.store import SQLITE_FILE

POLL_SECONDS = 0.002
SAMPLE_TIMEOUT = 30.0


@dataclass
class RpcOptions:
    members: int
    duration: float = 5.0
    warmup: float = 1.0
    concurrency: int = 64
    event_samples: int = 50
    rounds: int = 2  # CheckMembership windows, each between two echo windows
    seed: int = 20261122
    profile_dir: Path | None = None  # cProfile the servers in their timed windows
    server_env: dict[str, str] = field(default_factory=dict)  # what-if tagging settings
    server_args: tuple[str, ...] = ()  # what-if flags of bench.tagging.server


def _env(data_dir: Path, redis_url: str, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("POND_") and k not in ("MONGODB_URI", "REDIS_URL")}
    env.update(
        POND_DATA_DIR=str(data_dir), POND_MODE="embedded", POND_HOST="127.0.0.1",
        POND_AUTH_SECRET=secret, REDIS_URL=redis_url, POND_LOG_LEVEL="info",
        POND_LOG_FORMAT="json", POND_OUTBOX_POLL_SECONDS="1.0",
        POND_PHONE_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    return env


def _profile_args(opts: RpcOptions, kind: str) -> tuple[str, ...]:
    if not opts.profile_dir:
        return ()
    (opts.profile_dir / kind).mkdir(parents=True, exist_ok=True)
    return ("--profile", str(opts.profile_dir / kind))


def _tagging_process(workdir: Path, env: dict[str, str], extra: tuple[str, ...]) -> ServerProcess:
    proc = ServerProcess("tagging", workdir, env)
    proc.args = [sys.executable, "-m", "bench.tagging.server", "--port-file",
                 str(proc.port_file), *extra]
    return proc


def _breakdown(opts: RpcOptions, runs: list[RunResult], windows: list) -> str:
    """bench.profiling's report for the first window of each server."""
    from bench.profiling import profile_report

    parts, seen = [], {}
    for run, window in zip(runs, windows, strict=True):
        kind = "echo" if run.label == "echo" else "tagging"
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] == 1:
            path = opts.profile_dir / kind / f"{seen[kind]}.prof"
            parts.append(profile_report(path, window, run))
    return "\n\n".join(parts)


def _clear_outbox(db: Path) -> int:
    """The TagsChanged events the scoring runs queued (a first run's are hundreds of
    MB) count as relayed already: the windows measure CheckMembership, not a backlog
    being pushed to Valkey."""
    with sqlite3.connect(db) as conn:  # the runtime's outbox table
        return conn.execute('DELETE FROM "_outbox"').rowcount


def _ms(values: list[float]) -> dict:
    if not values:
        return {"samples": 0}
    ordered = sorted(values)
    return {
        "samples": len(values),
        "median_ms": round(statistics.median(values) * 1e3, 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 2),
        "max_ms": round(ordered[-1] * 1e3, 2),
    }


async def _echo_rtt(echo_call, request, metadata, samples: int = 200) -> list[float]:
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        await echo_call(request, metadata=metadata, timeout=5)
        out.append(time.perf_counter() - t)
    return out


async def _stream_hop(redis_url: str, samples: int = 100) -> list[float]:
    """XADD on one connection to a blocked XREAD on another."""
    writer, reader = connect_redis(redis_url), connect_redis(redis_url)
    stream = "bench.tagging.hop"
    out = []
    try:
        await writer.delete(stream)
        last = "0-0"
        for _ in range(samples):
            read = asyncio.create_task(reader.xread({stream: last}, block=2000, count=1))
            await asyncio.sleep(0.005)  # let the XREAD block first
            t = time.perf_counter()
            await writer.xadd(stream, {b"e": b"x" * 200})
            reply = await read
            out.append(time.perf_counter() - t)
            last = reply[0][1][0][0]
        await writer.delete(stream)
    finally:
        await writer.aclose()
        await reader.aclose()
    return out


async def _wait_member(check, member: str, segment: str, metadata, deadline: float) -> float:
    """Polls CheckMembership until `member` is in `segment`; returns when (perf_counter)."""
    request = tpb.CheckMembershipRequest(member_id=member, segment_ids=[segment])
    while True:
        reply = await check(request, metadata=metadata, timeout=5)
        now = time.perf_counter()
        if reply.memberships.get(segment):
            return now
        if now > deadline:
            raise TimeoutError(f"{member} not in {segment} after {SAMPLE_TIMEOUT:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


def _order(member: str, n: int, rng: random.Random) -> mpb.RecordOrderRequest:
    category = CATEGORIES[rng.randrange(6)]  # categories the brand already knows
    price = rng.randrange(1_000, 20_000)
    return mpb.RecordOrderRequest(
        order_id=f"bench-tagging-{n:06d}-{rng.randrange(1 << 30):08x}", member_id=member,
        channel=common_pb2.CHANNEL_STORE_POS, store_id="store-001", guide_id="guide-0001",
        items=[mpb.OrderItem(sku=f"sku-{n:05d}", category=category, quantity=1,
                             unit_price_fen=price)],
        amount_fen=price)


async def event_to_segment(member_stub, check, metadata, samples: int,
                           rng: random.Random) -> dict:
    registered, rpc, latency = [], [], []
    warm = 3
    for i in range(samples + warm):
        request = workload.register_request(90_000_000 + i, rng)
        t0 = time.perf_counter()
        reply = await member_stub.RegisterMember(request, metadata=metadata, timeout=10)
        member = reply.member.id
        seen = await _wait_member(check, member, "new_members", metadata, t0 + SAMPLE_TIMEOUT)
        t1 = time.perf_counter()
        await member_stub.RecordOrder(_order(member, i, rng), metadata=metadata, timeout=10)
        t2 = time.perf_counter()
        done = await _wait_member(check, member, FIRST_ORDER_SEGMENT, metadata,
                                  t1 + SAMPLE_TIMEOUT)
        if i >= warm:
            registered.append(seen - t0)
            rpc.append(t2 - t1)
            latency.append(done - t1)
    return {"order_to_segment": _ms(latency), "record_order_rpc": _ms(rpc),
            "register_to_segment": _ms(registered)}


async def measure(opts: RpcOptions, data_dir: Path, workdir: Path, say) -> dict:
    secret = secrets.token_urlsafe(32)
    metadata = call_metadata(mint_token(secret, "bench-campaign", Role.SERVICE))
    operator = call_metadata(mint_token(secret, "bench-operator", Role.OPERATOR))
    cleared = _clear_outbox(data_dir / SQLITE_FILE)
    valkey = EmbeddedValkey(workdir / "valkey").start()
    servers: list[ServerProcess] = []
    channels: list[grpc.aio.Channel] = []
    try:
        env = _env(data_dir, valkey.url, secret)
        sample = tpb.CheckMembershipResponse(
            memberships={s: i % 2 == 0 for i, s in enumerate(CHECKED_SEGMENTS)})
        answer = mpb.Member(id="e" * (sample.ByteSize() - 2))
        response_file = workdir / "echo-response.bin"
        response_file.write_bytes(answer.SerializeToString())
        t0 = time.perf_counter()
        tagging_env = dict(env, **opts.server_env)
        extra = (*_profile_args(opts, "tagging"), *opts.server_args)
        tagging = _tagging_process(workdir, tagging_env, extra).start(
            timeout=600)
        servers.append(tagging)
        load_seconds = time.perf_counter() - t0
        say(f"  tagging service up with {opts.members:,} members in {load_seconds:.0f} s")
        member_env = dict(env, POND_DATA_DIR=str(workdir / "member-data"))
        member = ServerProcess("member", workdir, member_env).start()
        servers.append(member)
        echo = ServerProcess("echo", workdir, env, "--response-file", str(response_file),
                             *_profile_args(opts, "echo")).start()
        servers.append(echo)
        targets = {}
        for name, proc in (("tagging", tagging), ("member", member), ("echo", echo)):
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}", options=CHANNEL_OPTIONS)
            channels.append(ch)
            await asyncio.wait_for(ch.channel_ready(), 60)
            targets[name] = ch
        check = tagging_pb2_grpc.TaggingServiceStub(targets["tagging"]).CheckMembership
        echo_call = targets["echo"].unary_unary(
            ECHO_METHOD, request_serializer=tpb.CheckMembershipRequest.SerializeToString,
            response_deserializer=mpb.Member.FromString, _registered_method=True)
        rng = random.Random(opts.seed)
        n = opts.members

        def make_request() -> tpb.CheckMembershipRequest:
            return tpb.CheckMembershipRequest(member_id=member_id(rng.randrange(n)),
                                              segment_ids=CHECKED_SEGMENTS)

        probe = await check(make_request(), metadata=metadata, timeout=10)
        if set(probe.memberships) != set(CHECKED_SEGMENTS):
            raise RuntimeError(f"unexpected CheckMembership reply: {probe}")
        schedule = (["echo"] + ["CheckMembership", "echo"] * opts.rounds) if opts.rounds else []
        runs: list[RunResult] = []
        windows = []
        for label in schedule:
            method, proc = (echo_call, echo) if label == "echo" else (check, tagging)
            hooks = None
            if opts.profile_dir:
                from bench.profiling import Window

                windows.append(window := Window(label, proc.pid, proc.signal))
                hooks = (window.start, window.stop)
            result = await closed_loop(label, method, make_request, metadata,
                                       concurrency=opts.concurrency, warmup=opts.warmup,
                                       duration=opts.duration, server_pid=proc.pid,
                                       on_window=hooks)
            runs.append(result)
            say(f"  {label:<16}{result.rate:>9,.0f} calls/s"
                + (f"  ({result.errors} errors: {result.first_error})" if result.errors else ""))
        member_stub = member_pb2_grpc.MemberServiceStub(targets["member"])
        failures = []
        events: dict = {"order_to_segment": {"samples": 0}}
        if opts.event_samples:
            say(f"  event to segment: {opts.event_samples} orders, one at a time ...")
            try:
                events = await event_to_segment(member_stub, check, operator,
                                                opts.event_samples, rng)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                failures.append(f"event to segment: {exc!r}"[:500])
        rtt = await _echo_rtt(echo_call, make_request(), metadata)
        try:
            hop = await _stream_hop(valkey.url)
        except Exception as exc:  # a baseline lost is reported, not fatal
            failures.append(f"stream hop: {exc!r}"[:500])
            hop = []
        errors = failures + tagging.error_lines() + member.error_lines()
        profile = _breakdown(opts, runs, windows) if opts.profile_dir else ""
        return {
            "profile": profile,
            "tagging_load_seconds": round(load_seconds, 1),
            "outbox_cleared": cleared,
            "echo_response_bytes": answer.ByteSize(),
            "check_response_bytes": sample.ByteSize(),
            "runs": [r.as_dict() for r in runs],
            "events": events,
            "baseline": {"echo_rtt": _ms(rtt), "stream_hop": _ms(hop),
                         "transport_ms": round((2 * statistics.median(rtt)
                                                + statistics.median(hop or [0.0])) * 1e3, 3)},
            "server_errors": errors[:5],
        }
    finally:
        await shut_down(channels, servers, valkey)
