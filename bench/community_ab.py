"""`python -m bench.community_ab --patch FILE`: a what-if on the community service,
measured so that it can be believed.

Two community servers, A (the code as it is) and B (FILE run first in the process,
as `bench.server --patch` does), each on its own copy of one seeded database (100
groups) and its own Redis database, are driven in alternation (echo, A, B, echo, B,
A, echo, A, B, echo), and the whole is repeated with fresh processes (`--repeats`).
Each repeat prints B's calls/s over A's.

Why so: two server processes of the same code, on the same data, differ by up to
10% in calls/s (`--patch` of an empty file: 1.006x, 0.992x, 0.898x in three
repeats), and servers seeded with different data differ by ~4% more. One A/B
decides nothing; look at the spread of the repeats against that of an empty patch.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
from pond.community.v1 import community_pb2_grpc

from bench import community as bench_community
from bench.load import closed_loop
from bench.runner import ServerProcess, shut_down
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from services.runtime.redis_conn import EmbeddedValkey

ORDER = ("echo", "A", "B", "echo", "B", "A", "echo", "A", "B", "echo")


async def one_repeat(workdir: Path, seeded: Path, patch: str, method: str,
                     duration: float, concurrency: int, say) -> float:
    """B's calls/s over A's in one set of fresh processes."""
    secret = secrets.token_urlsafe(32)
    valkey = EmbeddedValkey(workdir / "valkey").start()
    servers: list[ServerProcess] = []
    channels: list[grpc.aio.Channel] = []
    try:
        calls = {}
        for db, label in ((1, "A"), (2, "B")):
            shutil.copytree(seeded, workdir / label)
            proc, channel = await bench_community.start_community(
                workdir / f"{label}-run", workdir / label,
                valkey.url_of(db), secret, "info",
                *(("--patch", patch) if label == "B" else ()))
            servers.append(proc)
            channels.append(channel)
            stub = community_pb2_grpc.CommunityServiceStub(channel)
            calls[label] = (proc, getattr(stub, method))
        echo, echo_channel, echo_call = await bench_community.start_echo(workdir)
        servers.append(echo)
        channels.append(echo_channel)
        calls["echo"] = (echo, echo_call)
        md = call_metadata(mint_token(secret, "bench-operator", Role.OPERATOR))
        requests = bench_community.Requests()
        make = {"RouteMember": requests.route, "CheckIn": requests.check_in}[method]
        rates: dict[str, list[float]] = {"A": [], "B": [], "echo": []}
        for label in ORDER:
            proc, call = calls[label]
            result = await closed_loop(label, call, requests.echo if label == "echo" else make,
                                       md, concurrency=concurrency, warmup=1.0,
                                       duration=duration, server_pid=proc.pid)
            if result.errors:
                raise RuntimeError(f"{label}: {result.errors} calls failed: {result.first_error}")
            rates[label].append(result.rate)
        echo_rate = statistics.mean(rates["echo"])
        a, b = statistics.mean(rates["A"]), statistics.mean(rates["B"])
        say(f"  A {a:,.0f} calls/s ({a / echo_rate:.1%} of echo), "
            f"B {b:,.0f} ({b / echo_rate:.1%}): B/A {b / a:.3f}")
        return b / a
    finally:
        await shut_down(channels, servers, valkey)


async def measure(args: argparse.Namespace, workdir: Path, say) -> list[float]:
    seeded = workdir / "seeded"
    await bench_community.seed(seeded, bench_community.SMALL, random.Random(20261201))
    ratios = []
    for n in range(args.repeats):
        ratios.append(await one_repeat(workdir / f"repeat-{n}", seeded,
                                       str(Path(args.patch).resolve()), args.method,
                                       args.duration, args.concurrency, say))
    return ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.community_ab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", required=True, help="the what-if, run first in server B")
    p.add_argument("--method", choices=("RouteMember", "CheckIn"), default="RouteMember")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pond-community-ab-") as tmp:
        ratios = asyncio.run(measure(args, Path(tmp), lambda line: print(line, flush=True)))
    print(f"B/A over {len(ratios)} repeats: " + ", ".join(f"{r:.3f}" for r in ratios)
          + f" (mean {statistics.mean(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
