"""`python -m bench.tagging [--members N] [--quick] [--strict]`: see bench.tagging.

Exit status 1 when a check of correctness failed (the kernel and the engine, the
Mongo and SQLite backends or a prototype disagreed; RPCs failed), or with --strict
when a goal was missed; 0 otherwise (missed goals are reported, not fatal)."""

from __future__ import annotations

import sys

from bench.tagging import main


def _status(payload: dict, strict: bool) -> int:
    figures = payload["figures"]
    broken = any("DIFFERENT" in f["ratio"] or "NOT IDENTICAL" in f["ratio"] for f in figures)
    broken |= any(f["metric"].startswith("Mongo") and f["result"] == "MISS" for f in figures)
    rpc = payload["results"].get("rpc") or {}
    broken |= any(r["errors"] for r in rpc.get("runs", ())) or bool(rpc.get("server_errors"))
    missed = any(f["result"] == "MISS" for f in figures)
    return 1 if broken or (strict and missed) else 0


if __name__ == "__main__":
    payload = main(sys.argv[1:])
    sys.exit(_status(payload, "--strict" in sys.argv[1:]))
