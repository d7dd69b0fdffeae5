"""Engine scoring throughput against the hand-written kernel, in one process over
the same History: packed history rows loaded once straight from the SQLite file (the
floor of any load: the document store's `history` table, `_blob` column), assembled
once, then engine and kernel steps interleaved `reps` times each.
Reports rows/s of each by CPU time (this process; steady on a shared machine) and
by wall time, and whether both computed the same members for every tag."""

from __future__ import annotations

import gc
import sqlite3
import statistics
from pathlib import Path

import numpy as np

from bench.tagging import kernel
from bench.tagging import stages as st
from bench.tagging.brand import CATEGORIES, MANUAL_TAGS
from services.tagging.domain.packed import assemble_packed
from services.tagging.domain.scores import LifecycleThresholds


def raw_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute('SELECT "_id", "_blob" FROM history ORDER BY "_id"').fetchall()


def manual_masks(db: Path, n: int) -> dict[str, np.ndarray]:
    masks = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for tag in MANUAL_TAGS:
            mask = np.zeros(n, dtype=bool)
            rows = conn.execute("SELECT idx FROM manual_tags WHERE tag = ?", (tag,)).fetchall()
            mask[np.array([r[0] for r in rows], dtype=np.int64)] = True
            masks[tag] = mask
    return masks


def measure(db: Path, today: int, reps: int) -> dict:
    with st.Window() as read:
        rows = raw_rows(db)
    with st.Window() as build:
        idx = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        h = assemble_packed(idx, [r[1] for r in rows])
    del rows
    gc.collect()
    manual = manual_masks(db, len(h))
    categories = {c: i for i, c in enumerate(CATEGORIES)}
    rules = kernel.parsed_rules()
    thresholds = LifecycleThresholds()
    runs: dict[str, list[dict]] = {"engine": [], "kernel": []}
    mismatches: dict[str, int] = {}
    compared = 0
    for _ in range(reps):
        gc.collect()
        with st.Window() as w:
            engine_masks = kernel.engine_step(h, today, manual, categories, thresholds, rules)
        runs["engine"].append(w.as_dict())
        gc.collect()
        with st.Window() as w:
            kernel_masks = kernel.kernel_step(h, today, manual, thresholds)
        runs["kernel"].append(w.as_dict())
        mismatches = kernel.compare(engine_masks, kernel_masks)
        compared = len(set(engine_masks) - set(manual))
        del engine_masks, kernel_masks
    n = len(h)

    def rate(label: str, key: str) -> float:
        return n / statistics.median(r[key] for r in runs[label])

    return {
        "members": n,
        "raw_read": read.as_dict(),
        "assemble": build.as_dict(),
        "runs": runs,
        "engine_rows_per_cpu_second": round(rate("engine", "cpu")),
        "kernel_rows_per_cpu_second": round(rate("kernel", "cpu")),
        "engine_rows_per_second": round(rate("engine", "wall")),
        "kernel_rows_per_second": round(rate("kernel", "wall")),
        "ratio_cpu": round(rate("engine", "cpu") / rate("kernel", "cpu"), 4),
        "ratio_wall": round(rate("engine", "wall") / rate("kernel", "wall"), 4),
        "tags_compared": compared,
        "mismatches": mismatches,
    }
