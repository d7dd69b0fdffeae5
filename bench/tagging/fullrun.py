"""A full scoring run end to end, as the service does one: a TagEngine opened with
open_engine on a store, ScoringRunner.begin then execute (load every history row,
features, population statistics, scores, rule tags, segments, diff against the
current bitmaps, write the changes with their TagsChanged events to the outbox,
new segment versions). Timed as a whole (wall and CPU of the process) and per stage
(stages.Stages wrapped around the functions a run calls), with the peak RSS of the
run. Runs in a child process (bench.tagging.child) so its memory is its own."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime

import numpy as np
from pyroaring import BitMap

from bench.tagging import stages as st
from bench.tagging.brand import BOOLEAN_SEGMENTS
from services.runtime.clock import ManualClock
from services.tagging import engine as engine_mod
from services.tagging import partition
from services.tagging.domain import expressions as ex
from services.tagging.domain import population as pop
from services.tagging.domain import scoring as sc
from services.tagging.domain.history import MemberHistory
from services.tagging.domain.segment_eval import evaluate_bitmap
from services.tagging.engine import TagChangeSet, TagEngine
from services.tagging.events import tags_changed_payloads
from services.tagging.runs import ScoringRunner

# (owner, attribute, stage label); labels with " / " are children of the part before.
_MODULE_STAGES = [
    (engine_mod, "assemble_packed", "assemble rows (each batch read)"),
    (engine_mod, "concatenate", "features / join the batches"),
    (engine_mod, "compute_features", "features / compute_features"),
    (pop.PopulationStats, "of", "population stats"),
    (partition, "_pack", "partition results / pack"),
    (partition, "_unpack", "partition results / unpack"),
    (sc, "per_member_scores", "score / lifecycle + repurchase due"),
    (sc, "population_scores", "score / RFM + quadrant"),
    (sc, "compute_tags", "score / rule tags"),
    (sc, "compute_segments", "score / segments"),
    (sc, "bitmap_of", "score / masks to bitmaps"),
    (partition, "tags_changed_payloads", "write / TagsChanged payloads"),
    (partition, "make_event", "write / event envelopes"),
]
_STORE_STAGES = [
    ("scan_histories", "load rows (store.scan_histories)"),
    ("put_run_stats", "partition results / store"),
    ("load_run_stats", "partition results / store"),
    ("put_bitmaps", "write / put_bitmaps (bitmaps + outbox)"),
    ("create_run", "run bookkeeping"),
    ("update_run", "run bookkeeping"),
    ("refresh_run_lock", "run bookkeeping"),
    ("acquire_run_lock", "run bookkeeping"),
    ("release_run_lock", "run bookkeeping"),
]


def install(stages: st.Stages, engine: TagEngine, runner: ScoringRunner) -> None:
    for owner, attr, label in _MODULE_STAGES:
        stages.wrap(owner, attr, label)
    for attr, label in _STORE_STAGES:
        stages.wrap(engine.store, attr, label)
    stages.wrap(engine, "frame_of", "features")
    stages.wrap(engine, "record_segment_version", "write / segment versions")
    stages.wrap(engine, "masks_from_bitmaps", "score / manual tag masks")
    stages.wrap(runner, "_score", "score")
    stages.wrap(runner, "_write", "write")


def digest(engine: TagEngine) -> dict:
    """Member counts and a hash of every tag and segment bitmap: equal digests, equal
    results (compares backends)."""
    h = hashlib.sha256()
    counts = {}
    for kind, bitmaps in (("t", engine.tag_bitmaps), ("s", engine.segment_bitmaps)):
        for name in sorted(bitmaps):
            bm = bitmaps[name]
            counts[f"{kind}:{name}"] = len(bm)
            h.update(f"{kind}:{name}:".encode())
            h.update(np.asarray(bm.to_array(), dtype=np.uint32).tobytes())
    return {"sha256": h.hexdigest(), "counts": counts}


async def scoring_run(engine: TagEngine) -> dict:
    """One run with per-stage timing; returns the figures and the run doc's counts."""
    runner = ScoringRunner(engine)
    stages = st.Stages()
    install(stages, engine, runner)
    rss_before = st.rss_mb()
    reset = st.reset_peak_rss()
    try:
        with st.Window() as total:
            run = await runner.begin()
            await runner.execute(run.id)
    finally:
        stages.unwrap()
    return {
        "members": run.members_total,
        **total.as_dict(),
        "stages": stages.table(),
        "unwrapped": stages.missing,
        "tags_gained": run.tags_gained,
        "tags_lost": run.tags_lost,
        "events_published": run.events_published,
        "state": run.state,
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(st.peak_rss_mb(), 1),
        "peak_is_run_only": reset,
    }


async def open_timed(open_engine_fn, settings, when: datetime, store=None) -> tuple:
    with st.Window() as w:
        engine = await open_engine_fn(settings, ManualClock(when), store=store)
    return engine, {**w.as_dict(), "rss_mb": round(st.rss_mb(), 1)}


# -- probes on a loaded engine --


def _masks_by_membership(engine: TagEngine):
    """engine.masks_from_bitmaps as a membership test per row (`i in bitmap`): the
    change proposed for small frames, measured here without touching the service."""

    def masks(idx: np.ndarray, names) -> dict[str, np.ndarray]:
        rows = idx.tolist()
        out = {}
        for name in names:
            bm = engine.tag_bitmaps.get(name)
            out[name] = (
                np.zeros(len(rows), dtype=bool)
                if not bm
                else np.fromiter((i in bm for i in rows), dtype=bool, count=len(rows))
            )
        return out

    return masks


def _changes_key(changes) -> tuple:
    return tuple(
        (kind, name, tuple(g), tuple(lo))
        for kind, table in (("t", changes.tags), ("s", changes.segments))
        for name, (g, lo) in sorted(table.items())
    )


async def realtime_probe(engine: TagEngine, samples: int = 50, seed: int = 7) -> dict:
    """engine.rescore_member (the real-time path's evaluation of one member) on
    random members: as it is, with the share spent reading the current bitmaps into
    masks, then with masks_from_bitmaps replaced by a membership test (same changes
    required); and building the TagsChanged payloads of the changes, which
    the member event handlers do next."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(engine.ids), size=min(samples, len(engine.ids)), replace=False)
    histories = []
    for idx in picks.tolist():
        histories.append(await engine.store.get_history(idx) or MemberHistory(idx))
    stages = st.Stages()
    stages.wrap(engine, "masks_from_bitmaps", "masks_from_bitmaps")
    times, alt_times, payload_times, same = [], [], [], True
    try:
        for history in histories:
            t = time.perf_counter()
            changes = await engine.rescore_member(history)
            times.append(time.perf_counter() - t)
            # What the member event handlers do next: payloads of the changes (of one
            # gained tag when this member's rescore changed nothing).
            one = changes
            if not changes.tags:
                one = TagChangeSet()
                one.tags["lifecycle:active"] = (BitMap([history.idx]), BitMap())
            t = time.perf_counter()
            tags_changed_payloads(one, engine.ids)
            payload_times.append(time.perf_counter() - t)
            stages.unwrap()
            engine.masks_from_bitmaps = _masks_by_membership(engine)
            t = time.perf_counter()
            alt = await engine.rescore_member(history)
            alt_times.append(time.perf_counter() - t)
            del engine.masks_from_bitmaps
            same = same and _changes_key(changes) == _changes_key(alt)
            stages.wrap(engine, "masks_from_bitmaps", "masks_from_bitmaps")
    finally:
        stages.unwrap()
    total = sum(times)
    return {
        "samples": len(times),
        "median_ms": round(float(np.median(times)) * 1e3, 3),
        "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 3),
        "masks_from_bitmaps_share": round(stages.wall["masks_from_bitmaps"] / total, 3)
        if total
        else None,
        "membership_median_ms": round(float(np.median(alt_times)) * 1e3, 3),
        "membership_p95_ms": round(float(np.percentile(alt_times, 95)) * 1e3, 3),
        "membership_same_changes": same,
        "payloads_median_ms": round(float(np.median(payload_times)) * 1e3, 3),
    }


class SegmentBitmaps:
    """BitmapContext over an engine's segment and tag bitmaps (no member data)."""

    def __init__(self, engine: TagEngine) -> None:
        self.engine = engine
        self.universe = engine.universe

    def tag_bitmap(self, name: str) -> BitMap:
        return self.engine.tag_bitmaps.get(name, BitMap())

    def segment_bitmap(self, segment_id: str) -> BitMap:
        return self.engine.segment_bitmaps.get(segment_id, BitMap())

    def mask_to_bitmap(self, expr: ex.Expr) -> BitMap:
        raise AssertionError("a bitmap-only expression needs no member data")


def boolean_probe(engine: TagEngine, reps: int = 300) -> dict:
    """`in_segment(A) and in_segment(B) and not in_segment(C)` through evaluate_bitmap,
    against the same algebra written directly on the bitmaps ((A & B) - C)."""
    a, b, c = BOOLEAN_SEGMENTS
    expr = ex.parse(f'in_segment("{a}") and in_segment("{b}") and not in_segment("{c}")')
    ctx = SegmentBitmaps(engine)
    bms = [engine.segment_bitmaps.get(s, BitMap()) for s in BOOLEAN_SEGMENTS]
    engine_t, direct_t = [], []
    result = direct = BitMap()
    for _ in range(reps):  # interleaved, so both see the same machine
        t = time.perf_counter()
        result = evaluate_bitmap(expr, ctx)
        engine_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        direct = (bms[0] & bms[1]) - bms[2]
        direct_t.append(time.perf_counter() - t)
    return {
        "expression": f"{a} and {b} and not {c}",
        "sizes": [len(x) for x in bms],
        "universe": len(engine.universe),
        "result": len(result),
        "equal": result == direct,
        "median_ms": round(float(np.median(engine_t)) * 1e3, 4),
        "p95_ms": round(float(np.percentile(engine_t, 95)) * 1e3, 4),
        "direct_median_ms": round(float(np.median(direct_t)) * 1e3, 4),
        "reps": reps,
    }
