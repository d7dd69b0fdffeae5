"""Orchestration of `python -m bench.tagging`: build (or reuse) the synthetic brands,
run each measurement in its own process, then the gRPC stage, then the table.

Sizes: N members (--members, 1,000,000 by default; 100,000 with --quick) and N/10
for the growth check; the Mongo path at min(N, 100,000) (N/10 with --quick)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.tagging import dataset, rpc, table
from bench.tagging.stages import cpu_pressure_us

ROOT = Path(__file__).resolve().parent.parent.parent
SEED = 20261122


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.tagging",
        description="The tagging service's speed on a synthetic brand, every figure against "
                    "a baseline measured in the same run (see bench/tagging/__init__.py).")
    p.add_argument("--members", type=int, help="brand size N (1,000,000; --quick: 100,000)")
    p.add_argument("--quick", action="store_true",
                   help="smaller and shorter: N=100k unless --members, 2 s windows, "
                        "20 event samples, Mongo path at N/10")
    p.add_argument("--mongo-members", type=int,
                   help="members for the mongomock run (min(N, 100k); 0 skips it)")
    p.add_argument("--duration", type=float, help="seconds per RPC window (5; quick 2)")
    p.add_argument("--event-samples", type=int, help="orders timed to segment (50; quick 20)")
    p.add_argument("--reps", type=int, help="engine/kernel repetitions each (3; quick 2)")
    p.add_argument("--cache-dir", type=Path,
                   help="keep the generated databases here and reuse them (same day, size "
                        "and seed); default: a temporary directory, removed at the end")
    p.add_argument("--skip", action="append", default=[],
                   choices=("scoring", "small", "rpc", "mongo"), help="leave a stage out")
    p.add_argument("--strict", action="store_true",
                   help="python -m bench.tagging: exit 1 when a goal is missed")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra setting for the tagging server in the RPC stage, e.g. "
                        "POND_LOG_LEVEL=warning (what-if runs; repeatable)")
    p.add_argument("--whatif", action="store_true",
                   help="also measure the prototypes of bench/tagging/whatif.py at N members")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the N-member first run (bench/results/tagging-run.prof) and "
                        "the servers in the RPC windows (breakdown printed); the timings of "
                        "profiled parts carry cProfile's overhead")
    return p.parse_args(argv)


class Children:
    """Runs bench.tagging.child tasks, one process each, and reads their JSON."""

    def __init__(self, workdir: Path, say) -> None:
        self.workdir, self.say = workdir, say
        self.count = 0

    def run(self, task: str, *args: str, timeout: float = 1800) -> dict:
        self.count += 1
        out = self.workdir / f"child-{self.count}-{task}.json"
        log = self.workdir / f"child-{self.count}-{task}.log"
        cmd = [sys.executable, "-m", "bench.tagging.child", task, "--out", str(out), *args]
        with open(log, "wb") as err:
            done = subprocess.run(cmd, cwd=ROOT, stdout=err, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        if done.returncode != 0 or not out.exists():
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"child {task} failed ({done.returncode}):\n{tail}")
        return json.loads(out.read_text())


async def _build(cache: Path, sizes: list[int], say) -> dict[int, tuple[Path, dict]]:
    return {n: await dataset.pristine(cache, n, SEED, say) for n in sizes}


def _full_runs(children: Children, db: Path, data_dir: Path, today: int, probes: bool,
               profile: Path | None) -> dict:
    dataset.working_copy(db, data_dir)
    extra = ["--profile", str(profile)] if profile else []
    first = children.run("run", "--data-dir", str(data_dir), "--today", str(today), *extra)
    rerun_args = ["--data-dir", str(data_dir), "--today", str(today + 1)]
    rerun = children.run("run", *rerun_args, *(["--probes"] if probes else []))
    return {"first": first, "rerun": rerun}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    n = args.members or (100_000 if args.quick else 1_000_000)
    small = max(n // 10, 1_000)
    mongo_n = args.mongo_members
    if mongo_n is None:  # a size that also runs on SQLite, so the results can be compared
        mongo_n = small if args.quick else min(n, 100_000)
    duration = args.duration or (2.0 if args.quick else 5.0)
    samples = args.event_samples or (20 if args.quick else 50)
    reps = args.reps or (2 if args.quick else 3)
    started = time.perf_counter()

    def say(line: str) -> None:
        stamp = f"[{time.perf_counter() - started:4.0f} s] " if line else ""
        print(stamp + line, flush=True)

    env = report.environment()
    say(f"Pond tagging bench: {n:,} members (growth check at {small:,}), {env['cpus']} CPUs, "
        f"Python {env['python']}; every speed figure against a baseline of this run")
    psi0 = cpu_pressure_us()
    tmp = Path(tempfile.mkdtemp(prefix="pond-bench-tagging-"))
    results: dict = {"members": n, "small": small, "mongo_members": mongo_n}
    try:
        cache = args.cache_dir or tmp / "cache"
        today, _ = dataset.anchor_today()
        sizes = sorted({n, *([] if "small" in args.skip else [small])})
        t0 = time.perf_counter()
        dbs = asyncio.run(_build(cache, sizes, say))
        results["generation_seconds"] = round(time.perf_counter() - t0, 1)
        results["brand"] = {str(k): v[1] for k, v in dbs.items()}
        children = Children(tmp, say)
        if "scoring" not in args.skip:
            say(f"scoring step: engine vs hand-written kernel over {n:,} rows, "
                f"{reps} rounds each ...")
            results["scoring"] = children.run("scoring", "--db", str(dbs[n][0]),
                                              "--today", str(today), "--reps", str(reps))
            say(f"  engine/kernel {results['scoring']['ratio_cpu']:.0%} (CPU time)")
        results["runs"] = {}
        for size in sizes:
            say(f"full run at {size:,} members: first run, then the next day's rerun ...")
            profile = tmp / "run.prof" if args.profile and size == n else None
            results["runs"][str(size)] = _full_runs(
                children, dbs[size][0], tmp / f"data-{size}", today, size == n, profile)
            first, rerun = (results["runs"][str(size)][k]["run"] for k in ("first", "rerun"))
            say(f"  first {first['wall']:.1f} s, rerun {rerun['wall']:.1f} s "
                f"(wall; CPU {first['cpu']:.1f} / {rerun['cpu']:.1f} s)")
            if profile and profile.exists():
                kept = report.RESULTS_DIR / "tagging-run.prof"
                report.RESULTS_DIR.mkdir(exist_ok=True)
                shutil.copyfile(profile, kept)
                say(f"  profile: {kept} (python -m pstats)")
        if "rpc" not in args.skip:
            say(f"gRPC: tagging service with the {n:,}-member state, echo, member service ...")
            opts = rpc.RpcOptions(members=n, duration=duration, warmup=1.0 if not args.quick
                                  else 0.5, event_samples=samples, seed=SEED,
                                  profile_dir=tmp / "profiles" if args.profile else None,
                                  server_env=dict(kv.split("=", 1) for kv in args.server_env))
            results["rpc"] = asyncio.run(rpc.measure(opts, tmp / f"data-{n}", tmp / "rpc", say))
            if results["rpc"].get("profile"):
                say("server profiles of the first echo and CheckMembership windows:\n"
                    + results["rpc"]["profile"])
        if mongo_n and "mongo" not in args.skip:
            say(f"MongoDB path (mongomock-motor) at {mongo_n:,} members ...")
            results["mongo"] = children.run(
                "mongo", "--members", str(mongo_n), "--today", str(today), "--seed", str(SEED),
                "--data-dir", str(tmp / "mongo"))
            say(f"  first run {results['mongo']['first']['wall']:.1f} s on mongomock")
        if args.whatif and "rpc" not in args.skip:
            say("what-if: CheckMembership with the per-RPC log line off (POND_LOG_LEVEL=warning)")
            quiet = rpc.RpcOptions(members=n, duration=duration, warmup=opts.warmup,
                                   event_samples=0, rounds=1, seed=SEED,
                                   server_env={"POND_LOG_LEVEL": "warning"})
            results["rpc_quiet_logs"] = asyncio.run(
                rpc.measure(quiet, tmp / f"data-{n}", tmp / "rpc-quiet", say))
            say("what-if: order to segment with TagsChanged built from the changed ids only")
            compact = rpc.RpcOptions(members=n, event_samples=samples, rounds=0, seed=SEED + 1,
                                     server_args=("--compact-payloads",))
            results["rpc_compact_payloads"] = asyncio.run(
                rpc.measure(compact, tmp / f"data-{n}", tmp / "rpc-compact", say))
        if args.whatif:
            say(f"what-if prototypes at {n:,} members ...")
            results["whatif"] = children.run("whatif", "--data-dir", str(tmp / f"data-{n}"),
                                             "--today", str(today))
    finally:
        if os.environ.get("POND_BENCH_KEEP_TMP"):
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    psi1 = cpu_pressure_us()
    results["total_seconds"] = round(seconds, 1)
    results["cpu_pressure"] = (None if psi0 is None or psi1 is None
                               else round((psi1 - psi0) / 1e6 / seconds, 3))
    figures = table.figures(results)
    say("")
    say(table.render(results, figures))
    payload = {"when": report.timestamp(), "environment": env,
               "config": {"members": n, "small": small, "mongo_members": mongo_n,
                          "quick": args.quick, "duration": duration, "event_samples": samples,
                          "reps": reps, "seed": SEED, "server_env": args.server_env},
               "figures": figures, "results": results}
    path = report.write_json(payload, "tagging.json")
    say(f"\n{seconds:.0f} s in all; written: {path}")
    return payload
