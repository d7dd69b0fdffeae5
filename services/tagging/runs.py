"""Batch scoring runs: load every member's history (or one partition of the member
index), compute features, score every rule and score tag and every segment, diff
against the current bitmaps, write only the changes, announce them in batches.

A run split into N partitions (N worker processes, a Kubernetes Indexed Job) shares
mergeable population statistics through the store, so N partitions give exactly
the result of one: every partition scores its members against the merged
statistics and writes its result bitmaps; partition 0 merges them, diffs, writes
and records the run. One run at a time (a lock in the store); a crashed run is
resumed by starting it again with its id: the diff is against what was written,
so nothing is applied twice. Members re-evaluated in real time while the run is
under way keep their fresher real-time result (the run read an older history)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import time
from datetime import datetime

import grpc
import numpy as np
import structlog
from pyroaring import BitMap

from services.runtime.clock import epoch_micros
from services.runtime.errors import PondError, failed_precondition, not_found
from services.runtime.eventbus import make_event
from services.runtime.ids import new_id
from services.tagging.catalogue import DOMAIN
from services.tagging.domain import population as pop
from services.tagging.domain import scoring as sc
from services.tagging.domain.features import FeatureFrame
from services.tagging.engine import TagChangeSet, TagEngine
from services.tagging.events import PRODUCER, tags_changed_payloads

log = structlog.get_logger("pond.tagging.runs")
STALE_LOCK_SECONDS = 300
SAMPLE = 20


def _pack(bitmaps: dict[str, BitMap]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.frombuffer(v.serialize(), dtype=np.uint8) for k, v in bitmaps.items()})
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, BitMap]:
    with np.load(io.BytesIO(blob)) as data:
        return {k: BitMap.deserialize(data[k].tobytes()) for k in data.files}


def _subset(frame: FeatureFrame, keep: np.ndarray) -> FeatureFrame:
    """The frame restricted to rows in `keep` (bool), CSR category arrays included."""
    counts = np.diff(frame.cat_offsets)
    owner_keep = np.repeat(keep, counts)
    offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[keep], out=offsets[1:])
    return FeatureFrame(
        frame.idx[keep],
        frame.today,
        {k: v[keep] for k, v in frame.columns.items()},
        offsets,
        frame.cat_id[owner_keep],
        frame.cat_first_day[owner_keep],
        frame.cat_last_day[owner_keep],
        frame.cat_count[owner_keep],
    )


class ScoringRunner:
    def __init__(
        self, engine: TagEngine, *, wait_seconds: float = 600.0, rescore_delay: float = 2.0
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.wait_seconds = wait_seconds
        self.progress: dict[str, dict] = {}  # live docs of runs in this process
        self.rescore_delay = rescore_delay
        self._rescore_wanted = False
        self._rescore_task: asyncio.Task | None = None

    def rescore_soon(self) -> None:
        """The rules changed (a rule tag created or edited, a category's repurchase
        cycle set): a run over everyone starts `rescore_delay` seconds from now, so
        members get the new rule at once instead of at the next scheduled run. Changes
        in quick succession share one run; any run over everyone that starts in the
        meantime counts; while another run holds the lock, this one waits for it."""
        self._rescore_wanted = True
        if self._rescore_task is None or self._rescore_task.done():
            self._rescore_task = asyncio.create_task(self._rescore(), name="tagging-rescore")

    @property
    def rescore_pending(self) -> bool:
        """A rule changed and the run that rescores everyone has not begun yet."""
        return self._rescore_wanted

    async def _rescore(self) -> None:
        delay = self.rescore_delay
        while self._rescore_wanted:
            await asyncio.sleep(delay)
            if not self._rescore_wanted:
                return  # a run over everyone began meanwhile
            try:
                doc = await self.begin()
            except PondError as exc:
                if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                delay = max(self.rescore_delay, 5.0)  # another run holds the lock
                continue
            delay = self.rescore_delay
            # A failed run is recorded and logged by execute; a change made while it
            # ran (the loop's condition) gets a new run.
            with contextlib.suppress(Exception):
                await self.execute(doc["id"])

    async def close(self) -> None:
        """Stops a pending or running rescore (a running one keeps its lock and is
        resumable, like any interrupted run)."""
        task, self._rescore_task = self._rescore_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _now(self) -> int:
        return epoch_micros(self.engine.clock.now())

    async def begin(
        self, *, segment_id: str = "", partitions: int = 1, resume_run_id: str = ""
    ) -> dict:
        """Takes the one-run lock and records the run; FAILED_PRECONDITION while
        another run holds it."""
        if segment_id and segment_id not in self.engine.segments:
            raise not_found("segment", segment_id, domain=DOMAIN)
        if resume_run_id:
            old = await self.store.get_run(resume_run_id)
            if old is None:
                raise not_found("run", resume_run_id, domain=DOMAIN)
            if old["state"] == "succeeded":
                raise failed_precondition(
                    "RUN_FINISHED", "that run already succeeded", domain=DOMAIN
                )
            if resume_run_id in self.progress:
                # Still executing here: a resume would run it twice at once.
                raise failed_precondition(
                    "RUN_IN_PROGRESS",
                    f"scoring run {resume_run_id} is running",
                    domain=DOMAIN,
                    run_id=resume_run_id,
                )
            segment_id, partitions = old["segment_id"], old["partitions"]
            attempt = int(old.get("attempt", 0)) + 1
        else:
            attempt = 0
        run_id = resume_run_id or new_id("run")
        holder = await self.store.acquire_run_lock(
            run_id, self._now(), STALE_LOCK_SECONDS * 1_000_000
        )
        if holder != run_id:
            raise failed_precondition(
                "RUN_IN_PROGRESS", f"scoring run {holder} is running", domain=DOMAIN, run_id=holder
            )
        if not segment_id and not resume_run_id:
            self._rescore_wanted = False  # this run scores everyone with the rules as they are
        doc = {
            "id": run_id,
            "state": "running",
            "segment_id": segment_id,
            "partition": 0,
            "partitions": partitions,
            "stage": "load",
            "members_total": 0,
            "members_scored": 0,
            "tags_gained": 0,
            "tags_lost": 0,
            "events_published": 0,
            "duration_seconds": 0.0,
            "errors": [],
            "start_time": self._now(),
            "end_time": 0,
            # Partitions share statistics per attempt: a resumed run never merges
            # what a partition computed in an earlier, failed attempt.
            "attempt": attempt,
        }
        await self.store.put_run(run_id, doc)
        self.progress[run_id] = doc
        return doc

    async def _stage(self, doc: dict, stage: str, **counts) -> None:
        doc.update(stage=stage, **counts)
        await self.store.put_run(doc["id"], doc)
        await self.store.refresh_run_lock(doc["id"], self._now())

    @staticmethod
    def _stats_key(doc: dict, what: str) -> str:
        attempt = int(doc.get("attempt", 0))
        return f"{doc['id']}/{what}" if not attempt else f"{doc['id']}/{attempt}/{what}"

    async def _wait_all(self, key: str, partitions: int) -> dict[int, bytes]:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            parts = await self.store.load_run_stats(key)
            if len(parts) >= partitions:
                return parts
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions missing for {key}: have {sorted(parts)}")
            await asyncio.sleep(0.05)

    async def execute(self, run_id: str, partition: int = 0) -> dict:
        """Does partition `partition` of the run; partition 0 also merges and writes."""
        doc = self.progress.get(run_id) or await self.store.get_run(run_id)
        if doc is None:
            raise not_found("run", run_id, domain=DOMAIN)
        started = time.perf_counter()
        try:
            await self._execute(doc, partition, started)
        except Exception as exc:
            log.exception("scoring run failed", run_id=run_id, partition=partition)
            if partition == 0:
                doc.update(
                    state="failed",
                    errors=[*doc["errors"], repr(exc)[:500]],
                    end_time=self._now(),
                    duration_seconds=round(time.perf_counter() - started, 3),
                )
                await self.store.put_run(run_id, doc)
                await self.store.release_run_lock(run_id)
            raise
        finally:
            self.progress.pop(run_id, None)
            if partition == 0:
                self.engine.stop_tracking()
        return doc

    async def _execute(self, doc: dict, partition: int, started: float) -> None:
        engine, run_id, partitions = self.engine, doc["id"], doc["partitions"]
        if partition == 0:
            engine.track_real_time()  # before reading: see _write
        # A million row tuples would set off thousands of cyclic-GC passes that find
        # nothing to free (none of this is cyclic): pause the collector while loading.
        gc.disable()
        try:
            rows: list[tuple] = []
            async for batch in self.store.scan_histories(partition, partitions):
                rows.extend(batch)
            frame = engine.frame_for(rows)
            del rows
        finally:
            gc.enable()
        if doc["segment_id"]:
            members = engine.segment_bitmaps.get(doc["segment_id"], BitMap())
            frame = _subset(frame, np.isin(frame.idx, np.asarray(members.to_array())))
        if partition == 0:
            await self._stage(doc, "score", members_total=len(frame))
        stats_key, result_key = self._stats_key(doc, "stats"), self._stats_key(doc, "result")
        await self.store.put_run_stats(
            stats_key, partition, pop.PopulationStats.of(frame).to_bytes()
        )
        stats = pop.PopulationStats.merge(
            [
                pop.PopulationStats.from_bytes(b)
                for _, b in sorted((await self._wait_all(stats_key, partitions)).items())
            ]
        )
        learned = pop.learned_cycles(stats)
        result = self._score(frame, stats, learned)
        result["~scope"] = sc.bitmap_of(frame.idx)
        await self.store.put_run_stats(result_key, partition, _pack(result))
        if partition != 0:
            return
        await self._stage(doc, "write", members_scored=len(frame))
        parts = [
            _unpack(b) for _, b in sorted((await self._wait_all(result_key, partitions)).items())
        ]
        merged: dict[str, BitMap] = {}
        for part in parts:
            for name, bm in part.items():
                merged[name] = merged.get(name, BitMap()) | bm
        scope = merged.pop("~scope")
        published = await self._write(run_id, merged, scope, learned, doc)
        gained, lost = published[1]
        doc.update(
            state="succeeded",
            stage="done",
            members_total=len(scope),
            members_scored=len(scope),
            tags_gained=gained,
            tags_lost=lost,
            events_published=published[0],
            end_time=self._now(),
            duration_seconds=round(time.perf_counter() - started, 3),
        )
        await self.store.put_run(run_id, doc)
        # The partitions' statistics and results (tens of MB at 1M members) are spent.
        await self.store.clear_run_stats()
        await self.store.release_run_lock(run_id)
        log.info(
            "scoring run done",
            run_id=run_id,
            members=len(scope),
            gained=gained,
            lost=lost,
            seconds=doc["duration_seconds"],
        )

    def _score(
        self, frame: FeatureFrame, stats: pop.PopulationStats, learned: dict[int, float]
    ) -> dict[str, BitMap]:
        engine = self.engine
        given = engine.masks_from_bitmaps(frame.idx, engine.manual_names())
        given.update(sc.population_scores(frame, stats))
        tag_masks, seg_masks = engine.score(frame, given, engine.cycles_by_id(learned))
        manual = set(engine.manual_names())
        out = {
            f"t:{k}": sc.bitmap_of(frame.idx, m) for k, m in tag_masks.items() if k not in manual
        }
        out.update({f"s:{k}": sc.bitmap_of(frame.idx, m) for k, m in seg_masks.items()})
        return out

    async def _write(
        self,
        run_id: str,
        merged: dict[str, BitMap],
        scope: BitMap,
        learned: dict[int, float],
        doc: dict,
    ) -> tuple[int, tuple[int, int]]:
        engine = self.engine
        async with engine.lock:
            # Members re-evaluated in real time since the run read their history are
            # fresher than the run's result: writing it would undo those changes.
            fresher = engine.stop_tracking()
            if fresher:
                log.info("run skips members changed meanwhile", run_id=run_id, members=len(fresher))
                scope = scope - fresher
            changes = TagChangeSet()
            for key, result in merged.items():
                kind, name = key[:1], key[2:]
                current = engine.tag_bitmaps if kind == "t" else engine.segment_bitmaps
                before = current.get(name, BitMap()) & scope
                new = result & scope
                gained, lost = new - before, before - new
                if gained or lost:
                    (changes.tags if kind == "t" else changes.segments)[name] = (gained, lost)
            now = engine.clock.now()
            payloads = tags_changed_payloads(changes, engine.ids, run_id)
            events = [make_event(PRODUCER, "tags", p, now).SerializeToString() for p in payloads]
            # Written below; bitmaps changed only in real time stay dirty for flush().
            engine.apply_changes(changes, persisted=True)
            await self.store.put_bitmaps(
                "tag", {n: engine.tag_bitmaps[n].serialize() for n in changes.tags}, events
            )
            await self.store.put_bitmaps(
                "segment", {n: engine.segment_bitmaps[n].serialize() for n in changes.segments}
            )
            for seg_id, (gained, lost) in changes.segments.items():
                if seg_id in engine.segments:
                    await record_segment_version(engine, seg_id, gained, lost, f"run {run_id}", now)
            engine.learned_cycles = learned
            await self.store.put_definition(
                "state",
                "learned_cycles",
                {"id": "learned_cycles", "cycles": {str(k): v for k, v in learned.items()}},
            )
        return len(events), changes.count()


async def record_segment_version(
    engine: TagEngine, seg_id: str, gained: BitMap, lost: BitMap, reason: str, now: datetime
) -> None:
    """A new version of the segment with its diff against the previous one."""
    definition = engine.segments[seg_id]
    members = engine.segment_bitmaps.get(seg_id, BitMap())
    version = int(definition.doc.get("version", 0)) + 1
    definition.doc.update(version=version, count=len(members), update_time=epoch_micros(now))
    await engine.store.put_definition("segment", seg_id, definition.doc)
    await engine.store.add_version(
        "segment",
        seg_id,
        version,
        {
            "version": version,
            "count": len(members),
            "added": len(gained),
            "removed": len(lost),
            "sample_added": engine.member_ids_of(BitMap(gained.to_array()[:SAMPLE])),
            "sample_removed": engine.member_ids_of(BitMap(lost.to_array()[:SAMPLE])),
            "reason": reason,
            "create_time": epoch_micros(now),
        },
        members.serialize(),
    )
