"""`python -m bench.tagging`: the tagging service's speed on a synthetic brand of a
million members, every figure as a ratio to a baseline measured in the same run.

- scoring step (features, scores, rule tags) against a hand-written numpy kernel;
- full scoring runs end to end on SQLite (first run and the next day's rerun) at N
  and N/10 members, per stage, with the peak RSS;
- CheckMembership over gRPC against the bare grpc.aio echo server;
- an order's way to a segment (RecordOrder -> events -> tagging -> CheckMembership);
- a three-segment boolean on Roaring bitmaps; the real-time rescore of one member;
- the MongoDB store's path on mongomock-motor (same results as SQLite).

Modules: brand.py (the catalogue), synth.py (vectorised generation), dataset.py
(into a store, cached), kernel.py and scoring.py (the kernel comparison),
stages.py and fullrun.py (timed runs and probes), child.py (the per-measurement
processes), server.py and rpc.py (the gRPC stage), mongo_path.py, table.py, cli.py.
`main(argv) -> dict` returns what is written to bench/results/tagging.json.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> dict:
    from bench.tagging.cli import main as run

    return run(argv)
