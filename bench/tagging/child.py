"""The measurements that run in a process of their own (so that their memory and
CPU are theirs alone), one task per invocation, figures written as JSON:

    python -m bench.tagging.child scoring --db F --today D --reps N --out J
    python -m bench.tagging.child run --data-dir DIR --today D [--probes] [--profile P] --out J
    python -m bench.tagging.child mongo --members N --today D --seed S --out J
    python -m bench.tagging.child whatif --data-dir DIR --today D --out J
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from pathlib import Path

from services.runtime.logs import configure_logging
from services.tagging.store import SQLITE_FILE


def _write(path: str, payload: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


async def _run(args: argparse.Namespace) -> dict:
    from bench.tagging import dataset, fullrun
    from services.tagging.server import open_engine

    data_dir = Path(args.data_dir)
    engine, opened = await fullrun.open_timed(
        open_engine, dataset.settings_for(data_dir), dataset.noon_of(args.today)
    )
    try:
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            out = {"open": opened, "run": await fullrun.scoring_run(engine)}
            profiler.disable()
            profiler.dump_stats(args.profile)
        else:
            out = {"open": opened, "run": await fullrun.scoring_run(engine)}
        out["digest"] = fullrun.digest(engine)
        if args.probes:
            out["realtime"] = await fullrun.realtime_probe(engine)
            out["boolean"] = fullrun.boolean_probe(engine)
    finally:
        await engine.store.close()
    with sqlite3.connect(data_dir / SQLITE_FILE) as conn:  # the runtime's outbox table
        out["outbox_rows"] = conn.execute('SELECT COUNT(*) FROM "_outbox"').fetchone()[0]
    return out


async def _whatif(args: argparse.Namespace) -> dict:
    from bench.tagging import dataset, whatif
    from services.tagging.server import open_engine

    data_dir = Path(args.data_dir)
    out: dict = {}
    engine = await open_engine(dataset.settings_for(data_dir))
    try:
        manual = set(engine.manual_names())
        computed = {k: v for k, v in engine.tag_bitmaps.items() if k not in manual}
        changes = whatif.first_run_changes(computed)
        out["tags_changed"] = whatif.tags_changed_bytes(changes, engine.ids, "run-whatif")
        del changes
        out["gc"] = await whatif.gc_during_load(engine.store)
    finally:
        await engine.store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tagging.child")
    p.add_argument("task", choices=("scoring", "run", "mongo", "whatif"))
    p.add_argument("--out", required=True)
    p.add_argument("--today", type=int, required=True)
    p.add_argument("--db")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-dir")
    p.add_argument("--probes", action="store_true")
    p.add_argument("--profile", help="run: cProfile the scoring run into this file")
    p.add_argument("--members", type=int)
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    configure_logging("warning", "json")
    if args.task == "scoring":
        from bench.tagging.scoring import measure

        payload = measure(Path(args.db), args.today, args.reps)
    elif args.task == "run":
        payload = asyncio.run(_run(args))
    elif args.task == "whatif":
        payload = asyncio.run(_whatif(args))
    else:
        from bench.tagging.mongo_path import mongo_run

        payload = asyncio.run(
            mongo_run(args.members, args.today, args.seed, Path(args.data_dir or "."))
        )
    _write(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
