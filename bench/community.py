"""`python -m bench.community` (part of `make bench`): the community service's
RouteMember and CheckIn throughput as ratios to a bare grpc.aio echo server driven
by the same client in the same run, and the routing time of a brand with 25,000
groups against one with 100.

Two community servers run as in the dev stack (SQLite under a temporary directory,
an embedded Valkey for the outbox relay, real tokens, one JSON log line per RPC),
each on its own store and its own Redis database: one seeded with 100 groups, one
with 25,000, all in routed pools (BALANCE rules: the pool's open group with the
fewest members, the harder of the two fill orders), written straight into the store
before the server starts, in 25 pools (the live codes of 25 stores scanned at once:
4 groups a pool against 1,000). RouteMember sends a new member each call (a join: the
group's count, the membership, the member's counters and its event in one unit of
work); CheckIn a new
member each call (the day's record, the streak, an event). The schedule is echo,
RouteMember, echo, CheckIn, echo, then the scale runs (SCHEDULE): an untimed warm-up
of the 25,000-group server, then 100, 25k, 100, 25k, 100 alternated, and echo: each
ratio uses the echo runs next to it, and routing at 25,000 groups is compared by the
mean of its runs against the mean of the runs at 100 around them.

Then the floods (not a goal, a figure): 1,000 new members scanning one live code at
once, three times, each against 1,000 echo calls at once right before it.

Goals: RouteMember and CheckIn >= 40% of echo; routing time at 25,000 groups within
10% of 100 groups (calls/s at 25k >= 1/1.10 of calls/s at 100). Results go to
bench/results/community.json. Exit 1 when calls failed (or, with --strict, a goal
was missed)."""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import grpc
from pond.community.v1 import community_pb2 as cpb
from pond.community.v1 import community_pb2_grpc
from pond.member.v1 import member_pb2 as mpb

from bench import report
from bench.load import RunResult, closed_loop
from bench.procstat import find_pid
from bench.runner import CHANNEL_OPTIONS, ServerProcess, _server_env, shut_down
from bench.server import ECHO_METHOD
from services.community.domain import groups as dg
from services.community.domain import routing as dr
from services.community.store import GROUPS, RULES, SCHEMA
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from services.runtime.clock import epoch_micros
from services.runtime.documents import UnitOfWork, open_document_store
from services.runtime.redis_conn import EmbeddedValkey

GOALS = {"RouteMember": 0.40, "CheckIn": 0.40}
SCALE_GOAL = 1.10  # routing time at 25,000 groups over routing time at 100
SMALL, LARGE = 100, 25_000
WARM_UP_LARGE = "warm-up@25k"
# The 100-group server has served RouteMember and CheckIn for two runs by the time
# the scale runs start; the 25,000-group one gets one untimed run of its own first, so
# neither side is measured cold (its first run was ~8% slower: page cache, plans).
SCHEDULE = ("echo", "RouteMember", "echo", "CheckIn", "echo", WARM_UP_LARGE,
            "RouteMember@100", "RouteMember@25k", "RouteMember@100", "RouteMember@25k",
            "RouteMember@100", "echo")
FLOOD, FLOOD_ROUNDS = 1000, 3  # scans of one live code at once (floods)
POOLS = 25  # live codes being scanned at once (one per store): 4 or 1,000 groups each
RULES_IDS = [f"bench-{p:02d}" for p in range(POOLS)]


async def seed(data_dir: Path, groups: int, rng: random.Random) -> float:
    """`groups` groups spread over POOLS routing rules' pools (BALANCE; capacity 500,
    0-300 members each), straight into the store."""
    started = time.perf_counter()
    data_dir.mkdir(parents=True)
    store = await open_document_store(SCHEMA, sqlite_path=str(data_dir / "community.db"))
    now = epoch_micros(datetime.now(UTC))
    template = {"name_prefix": "Bench", "kind": 9, "level": 1, "store_id": "", "city": "",
                "owner_guide_id": "", "capacity": 500, "entry_rules": dg.entry_rules_doc(),
                "qr_code_url": ""}
    per_pool = groups // POOLS
    try:
        uow = UnitOfWork()
        for rule_id in RULES_IDS:
            rule = dr.new_rule(rule_id, {"name": rule_id, "template": template,
                                         "fill_strategy": dr.BALANCE}, now)
            rule["last_sequence"] = per_pool
            uow.insert(RULES.name, rule)
        await store.commit(uow)
        docs = []
        for p, rule_id in enumerate(RULES_IDS):
            for seq in range(1, per_pool + 1):
                g = dg.new_group(dr.pool_group_id(rule_id, seq), {
                    "name": f"Bench {p} {seq}", "kind": 9, "capacity": 500,
                    "store_id": f"store-{p:03d}"}, now, pool_id=rule_id, sequence=seq)
                g["member_count"] = rng.randint(0, 300)
                docs.append(dg.refresh_open(g))
        for start in range(0, len(docs), 5000):
            uow = UnitOfWork()
            uow.put_many(GROUPS.name, docs[start:start + 5000])
            await store.commit(uow)
    finally:
        await store.close()
    return time.perf_counter() - started


def _echo_answer() -> bytes:
    """A Member about the size of a RouteMemberResponse (a group and a membership)."""
    m = mpb.Member(id="m01a22d120d4c00000ebbc6df", store_id="store-0042",
                   guide_id="guide-0420", tier_level=2, points_balance=1288)
    m.profile.name, m.profile.city = "王42", "上海"
    m.identities.add(kind=mpb.IDENTITY_KIND_PHONE, value="139****0042")
    m.identities.add(kind=mpb.IDENTITY_KIND_WECHAT_UNIONID, value="oU-bench-0000000042")
    return m.SerializeToString()


def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


class Requests:
    """The bench's requests: every RouteMember and CheckIn for a new member (over the
    POOLS live codes in turn), echo's the size of GetMember's."""

    def __init__(self) -> None:
        self._numbers, self._tag = count(1), secrets.token_hex(3)

    def route(self) -> cpb.RouteMemberRequest:
        n = next(self._numbers)
        return cpb.RouteMemberRequest(member_id=f"r{self._tag}{n:08d}",
                                      rule_id=RULES_IDS[n % POOLS])

    def check_in(self) -> cpb.CheckInRequest:
        return cpb.CheckInRequest(member_id=f"c{self._tag}{next(self._numbers):08d}")

    def echo(self) -> mpb.GetMemberRequest:
        return mpb.GetMemberRequest(member_id=f"m{self._tag}{next(self._numbers):08d}")


async def start_community(workdir: Path, data: Path, redis_url: str, secret: str,
                          log_level: str = "info", *extra: str,
                          ) -> tuple[ServerProcess, grpc.aio.Channel]:
    """A community server on `data` (its other services unreachable: none is asked)
    and a ready channel to it; it runs in `workdir`."""
    env = _server_env(data, redis_url, secret, "", log_level, {
        "POND_COMMUNITY_MEMBER_TARGET": "127.0.0.1:9",
        "POND_COMMUNITY_TAGGING_TARGET": "127.0.0.1:8",
        "POND_COMMUNITY_CALLBACK_PORT": "0"})
    workdir.mkdir()
    proc = ServerProcess("community", workdir, env, *extra).start()
    channel = _channel(proc.port)
    await asyncio.wait_for(channel.channel_ready(), 30)
    return proc, channel


async def start_echo(workdir: Path) -> tuple[ServerProcess, grpc.aio.Channel, Any]:
    """The echo server answering the bench's echo answer, a ready channel to it, and
    its call."""
    answer = workdir / "echo-response.bin"
    answer.write_bytes(_echo_answer())
    echo = ServerProcess("echo", workdir, _server_env(workdir, "", "", "", "info", {}),
                         "--response-file", str(answer)).start()
    channel = _channel(echo.port)
    await asyncio.wait_for(channel.channel_ready(), 30)
    call = channel.unary_unary(
        ECHO_METHOD, request_serializer=mpb.GetMemberRequest.SerializeToString,
        response_deserializer=mpb.Member.FromString, _registered_method=True)
    return echo, channel, call


async def measure(args: argparse.Namespace, workdir: Path, say) -> dict:
    rng = random.Random(20261130)
    secret = secrets.token_urlsafe(32)
    valkey = EmbeddedValkey(workdir / "valkey").start()
    servers: list[ServerProcess] = []
    channels: list[grpc.aio.Channel] = []
    try:
        seeded = {}
        for label, n in (("small", SMALL), ("large", LARGE)):
            seeded[label] = await seed(workdir / label, n, rng)
            say(f"seeded {n:,} groups in {seeded[label]:.1f} s")
        stubs, procs = {}, {}
        for db, label in enumerate(("small", "large"), start=1):
            # Each server on its own Redis database: on one, the server started first
            # would hold the relay's lease for both and their consumer groups would
            # share each other's events (the idle one doing part of the other's work).
            redis_url = valkey.url_of(db)
            proc, ch = await start_community(workdir / f"{label}-run", workdir / label,
                                             redis_url, secret, args.log_level)
            servers.append(proc)
            channels.append(ch)
            stubs[label], procs[label] = community_pb2_grpc.CommunityServiceStub(ch), proc
        echo, echo_channel, echo_call = await start_echo(workdir)
        servers.append(echo)
        channels.append(echo_channel)
        md = call_metadata(mint_token(secret, "bench-operator", Role.OPERATOR))
        requests = Requests()
        route = requests.route
        targets = {
            "echo": (echo, echo_call, requests.echo),
            "RouteMember": (procs["small"], stubs["small"].RouteMember, route),
            "CheckIn": (procs["small"], stubs["small"].CheckIn, requests.check_in),
            "RouteMember@100": (procs["small"], stubs["small"].RouteMember, route),
            "RouteMember@25k": (procs["large"], stubs["large"].RouteMember, route),
            WARM_UP_LARGE: (procs["large"], stubs["large"].RouteMember, route),
        }
        valkey_pid = find_pid("valkey-server", f":{valkey.port}")
        runs: list[RunResult] = []
        for label in SCHEDULE:
            server, method, make = targets[label]
            result = await closed_loop(
                label, method, make, md, concurrency=args.concurrency, warmup=args.warmup,
                duration=args.duration, server_pid=server.pid,
                helper_pids=(valkey_pid,) if valkey_pid else ())
            say(f"  {label:<16} {result.rate:>9,.0f} calls/s"
                + (f"  ({result.errors} errors: {result.first_error})" if result.errors else ""))
            runs.append(result)
        flood = await floods(stubs["small"].RouteMember, echo_call, requests, md, say)
        errors = [line for s in servers if s.kind == "community" for line in s.error_lines()]
        return {"runs": runs, "seeded": seeded, "server_errors": errors, "flood": flood}
    finally:
        await shut_down(channels, servers, valkey)


async def floods(route: Any, echo: Any, requests: Requests, md: Any, say) -> dict:
    """FLOOD new members scanning one live code at once (a poster at a store event),
    FLOOD_ROUNDS times, each into a pool of its own, against FLOOD echo calls at once
    right before: the time for all of them to be answered, and its ratio to echo's."""
    rounds = []
    for n in range(FLOOD_ROUNDS):
        echo_calls = [requests.echo() for _ in range(FLOOD)]
        started = time.perf_counter()
        await asyncio.gather(*(echo(r, metadata=md) for r in echo_calls))
        echo_seconds = time.perf_counter() - started
        scans = [cpb.RouteMemberRequest(member_id=f"flood-{n}-{i:04d}", rule_id=RULES_IDS[n])
                 for i in range(FLOOD)]
        started = time.perf_counter()
        routed = await asyncio.gather(*(route(r, metadata=md) for r in scans))
        seconds = time.perf_counter() - started
        assert len({r.membership.member_id for r in routed}) == FLOOD
        rounds.append({"seconds": round(seconds, 4), "echo_seconds": round(echo_seconds, 4),
                       "ratio": round(seconds / echo_seconds, 2)})
        say(f"  flood {n + 1}: {FLOOD:,} scans of one code answered in {seconds * 1000:,.0f}"
            f" ms ({seconds / echo_seconds:.1f}x {FLOOD:,} echo calls at once,"
            f" {echo_seconds * 1000:,.0f} ms)")
    return {"scans": FLOOD, "rounds": rounds}


def figures(runs: list[RunResult]) -> list[report.Figure]:
    out = []
    for i, run in enumerate(runs):
        if run.label in GOALS:
            echoes = [runs[j] for j in (i - 1, i + 1)
                      if 0 <= j < len(runs) and runs[j].label == "echo"]
            if echoes:
                out.append(report.Figure(run.label, run, echoes, GOALS[run.label]))
    return out


def scale(runs: list[RunResult]) -> tuple[float, float, float]:
    """(calls/s at 100 groups, at 25,000: the means of their alternated runs; the
    time ratio). The warm-up of the 25,000-group server is not one of them."""
    small = [r.rate for r in runs if r.label == "RouteMember@100"]
    large = [r.rate for r in runs if r.label == "RouteMember@25k"]
    mean_small, mean_large = sum(small) / len(small), sum(large) / len(large)
    return mean_small, mean_large, (mean_small / mean_large if mean_large else float("inf"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.community",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--log-level", default="info")
    p.add_argument("--strict", action="store_true")
    args = p.parse_args(argv)
    print(f"Pond community bench: {args.concurrency} calls in flight, {args.warmup:g} s"
          f" warm-up + {args.duration:g} s per run", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pond-bench-community-") as tmp:
        m = asyncio.run(measure(args, Path(tmp), lambda line: print(line, flush=True)))
    runs: list[RunResult] = m["runs"]
    figs = figures(runs)
    small, large, ratio = scale(runs)
    print()
    print(report.table(runs, figs))
    scale_ok = ratio <= SCALE_GOAL
    print(f"\nrouting time, 25,000 groups over 100: {ratio:.3f} ({large:,.0f} against"
          f" {small:,.0f} calls/s; goal <= {SCALE_GOAL:.2f}) "
          f"{'PASS' if scale_ok else 'MISS'}")
    payload = {
        "when": report.timestamp(), "environment": report.environment(),
        "config": vars(args), "seed_seconds": m["seeded"],
        "runs": [r.as_dict() for r in runs], "results": [f.as_dict() for f in figs],
        "scale": {"groups": [SMALL, LARGE], "calls_per_second_small": round(small, 1),
                  "calls_per_second_large": round(large, 1), "time_ratio": round(ratio, 4),
                  "goal": SCALE_GOAL, "passed": scale_ok},
        "flood": m["flood"],
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    times = [r["seconds"] * 1000 for r in m["flood"]["rounds"]]
    ratios = [r["ratio"] for r in m["flood"]["rounds"]]
    print(f"{FLOOD:,} scans of one live code at once: {min(times):,.0f}-{max(times):,.0f} ms"
          f" ({min(ratios):.1f}-{max(ratios):.1f}x as long as {FLOOD:,} echo calls at once)")
    print(f"written: {report.write_json(payload, 'community.json')}")
    failed = sum(r.errors for r in runs)
    if failed or m["server_errors"]:
        print(f"\n{failed} calls failed; server errors: {m['server_errors'][:3]}",
              file=sys.stderr)
        return 1
    if args.strict and not (scale_ok and all(f.passed for f in figs)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
