"""`python -m bench` (`make bench`): GetMember and RecordOrder throughput as ratios
to a bare grpc.aio echo server driven by the same client in the same run.

Exit status: 0 when every call succeeded (goals missed are reported, not fatal,
unless --strict), 1 when calls failed or, with --strict, a goal was missed.
`--profile` also runs the servers under cProfile for the timed windows and prints
where their time goes per call (the throughput figures are then not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.runner import Measured, Options, measure


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="timed seconds per run (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run (1)")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight (64)")
    p.add_argument("--members", type=int, default=5_000, help="members to seed (5000)")
    p.add_argument(
        "--log-level",
        default="info",
        help="the member service's log level (info: one line per RPC, as deployed)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_setting,
        help="extra setting for the member server, e.g. POND_OUTBOX_POLL_SECONDS=5"
        " (what-if runs; repeatable)",
    )
    p.add_argument(
        "--server-patch",
        default="",
        metavar="FILE",
        help="a Python file run in the member server before it starts, to measure"
        " a what-if change without editing services/",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the servers during the timed windows and print a breakdown",
    )
    return p.parse_args(argv)


def _payload(opts: Options, m: Measured, figs: list[report.Figure], seconds: float) -> dict:
    return {
        "when": report.timestamp(),
        "environment": report.environment(),
        "config": {
            "duration": opts.duration,
            "warmup": opts.warmup,
            "concurrency": opts.concurrency,
            "members": opts.members,
            "log_level": opts.log_level,
            "server_env": opts.server_env,
            "server_patch": opts.server_patch,
            "profiled": opts.profile_dir is not None,
        },
        "seed": {
            "members": m.members,
            "seconds": round(m.seed_seconds, 2),
            "register_per_second": round(m.members / m.seed_seconds, 1),
        },
        "echo_response_bytes": m.echo_response_bytes,
        "outbox": {
            "max_drain_seconds": round(m.outbox_drain_seconds, 2),
            "events_on_stream": m.events_on_stream,
        },
        "runs": [r.as_dict() for r in m.runs],
        "results": [f.as_dict() for f in figs],
        "total_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    opts = Options(
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        members=args.members,
        log_level=args.log_level,
        server_env=dict(args.server_env),
        server_patch=args.server_patch,
    )
    env = report.environment()
    print(
        f"Pond bench: {env['cpus']} CPUs, Python {env['python']}, grpcio {env['grpcio']}; "
        f"{opts.concurrency} calls in flight, {opts.warmup:g} s warm-up + "
        f"{opts.duration:g} s per run",
        flush=True,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pond-bench-") as tmp:
        workdir = Path(tmp)
        if args.profile:
            opts.profile_dir = workdir / "profiles"
        m = asyncio.run(measure(opts, workdir, lambda line: print(line, flush=True)))
        if args.profile:
            from bench.profiling import breakdown

            print()
            print(breakdown(opts.profile_dir, m.runs, m.windows))
            kept = report.RESULTS_DIR / "profiles"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(opts.profile_dir, kept)
            print(f"\nprofiles kept in {kept} (python -m pstats <file>)")
    seconds = time.perf_counter() - started
    figs = report.figures(m.runs)
    print()
    print(report.table(m.runs, figs))
    print(
        f"\necho answers a {m.echo_response_bytes}-byte Member; seeding ran at "
        f"{m.members / m.seed_seconds:,.0f} RegisterMember/s; the outbox drained within "
        f"{m.outbox_drain_seconds:.1f} s of each run ({m.events_on_stream:,} events on the "
        f"stream); {seconds:.0f} s in all."
    )
    if args.profile:
        print(
            "(profiled: the calls/s above carry cProfile's overhead; "
            "run without --profile for the figures)"
        )
    whatif = bool(opts.server_env or opts.server_patch or opts.log_level != "info")
    name = "profile.json" if args.profile else "whatif.json" if whatif else "latest.json"
    print(f"written: {report.write_json(_payload(opts, m, figs, seconds), name)}")
    failed = sum(r.errors for r in m.runs)
    if failed or m.server_errors:
        print(f"\n{failed} calls failed; server errors: {m.server_errors[:3]}", file=sys.stderr)
        return 1
    if args.strict and not all(f.passed for f in figs):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
