"""What one partition of a scoring run does: load its share of the member index,
compute features and population statistics, exchange them with the other
partitions through the store, score every rule and score tag and segment, and
(partition 0) merge every partition's result, diff it against the bitmaps and
write only the changes with their TagsChanged events. The run's bookkeeping (the
lock, its record, waiting, cancelling) is services.tagging.runs.ScoringRunner, which
is a PartitionWork."""

from __future__ import annotations

import io
import time

import numpy as np
import structlog
from pyroaring import BitMap

from services.runtime.eventbus import make_event
from services.tagging.domain import population as pop
from services.tagging.domain import scoring as sc
from services.tagging.domain.features import FeatureFrame
from services.tagging.domain.scoring_runs import SUCCEEDED, Run
from services.tagging.engine import TagChangeSet, TagEngine
from services.tagging.events import PRODUCER, tags_changed_payloads
from services.tagging.store import TaggingStore

log = structlog.get_logger("pond.tagging.runs")


def _pack(bitmaps: dict[str, BitMap]) -> bytes:
    buf = io.BytesIO()
    arrays = {k: np.frombuffer(v.serialize(), dtype=np.uint8) for k, v in bitmaps.items()}
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # (numpy's stub: allow_pickle in **kwds)
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


class PartitionWork:
    """The scoring steps; the bookkeeping hooks are ScoringRunner's."""

    engine: TagEngine
    store: TaggingStore

    def _now(self) -> int:
        raise NotImplementedError

    async def _save(self, run: Run, **changes) -> None:
        raise NotImplementedError

    async def _stage(self, run: Run, stage: str, **counts) -> None:
        raise NotImplementedError

    @staticmethod
    def _stats_key(run: Run, what: str) -> str:
        """Where partitions exchange `what`: per attempt, so a resumed run never
        merges what a partition computed in an earlier, failed attempt."""
        return f"{run.id}/{what}" if not run.attempt else f"{run.id}/{run.attempt}/{what}"

    async def _wait_all(self, run: Run, key: str) -> dict[int, bytes]:
        raise NotImplementedError

    async def _execute(self, run: Run, partition: int, started: float) -> None:
        engine, run_id, partitions = self.engine, run.id, run.partitions
        if partition == 0:
            engine.track_real_time(run_id)  # before reading: see _write
        frame = await engine.load_frame(partition, partitions)
        if run.segment_id:
            members = engine.segment_bitmaps.get(run.segment_id, BitMap())
            frame = _subset(frame, np.isin(frame.idx, np.asarray(members.to_array())))
        if partition == 0:
            await self._stage(run, "score", members_total=len(frame))
        stats_key, result_key = self._stats_key(run, "stats"), self._stats_key(run, "result")
        await self.store.put_run_stats(
            stats_key, partition, pop.PopulationStats.of(frame).to_bytes()
        )
        stats = pop.PopulationStats.merge(
            [
                pop.PopulationStats.from_bytes(b)
                for _, b in sorted((await self._wait_all(run, stats_key)).items())
            ]
        )
        learned = pop.learned_cycles(stats)
        result = self._score(frame, stats, learned)
        result["~scope"] = sc.bitmap_of(frame.idx)
        await self.store.put_run_stats(result_key, partition, _pack(result))
        if partition != 0:
            return
        parts = [_unpack(b) for _, b in sorted((await self._wait_all(run, result_key)).items())]
        # From here on a cancel is refused: the run writes its result whole.
        await self._stage(run, "write", members_scored=len(frame))
        merged: dict[str, BitMap] = {}
        for part in parts:
            for name, bm in part.items():
                merged[name] = merged.get(name, BitMap()) | bm
        scope = merged.pop("~scope")
        published = await self._write(run_id, merged, scope, learned)
        gained, lost = published[1]
        await self._save(
            run,
            state=SUCCEEDED,
            stage="done",
            members_total=len(scope),
            members_scored=len(scope),
            tags_gained=gained,
            tags_lost=lost,
            events_published=published[0],
            end_time=self._now(),
            duration_seconds=round(time.perf_counter() - started, 3),
        )
        # The partitions' statistics and results (tens of MB at 1M members) are spent.
        await self.store.clear_run_stats()
        await self.store.release_run_lock(run_id)
        log.info(
            "scoring run done",
            run_id=run_id,
            members=len(scope),
            gained=gained,
            lost=lost,
            seconds=run.duration_seconds,
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
    ) -> tuple[int, tuple[int, int]]:
        engine = self.engine
        async with engine.lock:
            # Members re-evaluated in real time since the run read their history are
            # fresher than the run's result: writing it would undo those changes.
            fresher = engine.stop_tracking(run_id)
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
            await engine.persist_since()
            for seg_id, (gained, lost) in changes.segments.items():
                if seg_id in engine.segments:
                    await engine.record_segment_version(seg_id, gained, lost, f"run {run_id}", now)
            engine.learned_cycles = learned
            await self.store.save_learned_cycles(learned)
        return len(events), changes.count()
