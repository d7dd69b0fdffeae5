"""Batch scoring runs: load every member's history (or one partition of the member
index), compute features, score every rule and score tag and every segment, diff
against the current bitmaps, write only the changes, announce them in batches.

A run split into N partitions (N worker processes, a Kubernetes Indexed Job) shares
mergeable population statistics through the store, so N partitions give exactly
the result of one: every partition scores its members against the merged
statistics and writes its result bitmaps; partition 0 merges them, diffs, writes
and records the run. A partition that does not report within `partition_timeout`
fails the run, naming it. One run at a time (a lock in the store); a crashed run is
resumed by starting it again with its id: the diff is against what was written,
so nothing is applied twice. Members re-evaluated in real time while the run is
under way keep their fresher real-time result (the run read an older history).

An operator may cancel a run (`cancel`, from any replica): the run's doc is marked
cancelled and the lock released at once. Every write a partition makes to the run's
doc is a compare-and-set on "still running", and the waits poll the doc, so each
partition stops at its next step; the one step a cancel is refused in is "write"
(partition 0 applying the merged result, seconds), so a cancelled run never writes."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from services.runtime.clock import epoch_micros
from services.runtime.errors import FailedPrecondition, failed_precondition, not_found
from services.runtime.ids import new_id
from services.tagging.catalogue import DOMAIN
from services.tagging.engine import TagEngine
from services.tagging.partition import PartitionWork

log = structlog.get_logger("pond.tagging.runs")
STALE_LOCK_SECONDS = 300
HEARTBEAT_MICROS = 10_000_000  # a waiting partition refreshes the lock this often


class RunStopped(Exception):
    """The run was cancelled (or resumed or ended elsewhere) while this partition
    worked on it: the partition stops without touching the run's doc."""


class PartitionsMissing(Exception):
    def __init__(self, missing: list[int], partitions: int, seconds: float) -> None:
        which = ", ".join(map(str, missing))
        plural = "s" if len(missing) > 1 else ""
        super().__init__(
            f"partition{plural} {which} of {partitions} did not report within {seconds:g} s"
        )


class ScoringRunner(PartitionWork):
    def __init__(
        self, engine: TagEngine, *, partition_timeout: float = 300.0, rescore_delay: float = 2.0
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.partition_timeout = partition_timeout
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
            except FailedPrecondition:
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

    async def cancel(self, run_id: str) -> dict:
        """Marks a running run cancelled and frees the lock; see the module doc."""
        for _ in range(10):  # a partition moving on between our read and write: again
            doc = await self.store.get_run(run_id)
            if doc is None:
                raise not_found("run", run_id, domain=DOMAIN)
            if doc["state"] == "cancelled":
                return doc
            if doc["state"] != "running":
                raise failed_precondition(
                    "RUN_FINISHED", f"scoring run {run_id} {doc['state']}", domain=DOMAIN
                )
            if doc["stage"] == "write":
                raise failed_precondition(
                    "RUN_WRITING",
                    f"scoring run {run_id} is writing its results and ends in a moment",
                    domain=DOMAIN,
                    run_id=run_id,
                )
            now = self._now()
            cancelled = {
                **doc,
                "state": "cancelled",
                "end_time": now,
                "duration_seconds": round(max(0, now - doc["start_time"]) / 1e6, 3),
            }
            # The stage too: a partition moving on to "write" meanwhile wins.
            expect = {"state": "running", "stage": doc["stage"]}
            if await self.store.put_run(run_id, cancelled, expect=expect):
                break
        else:
            raise failed_precondition(
                "RUN_CHANGING", f"scoring run {run_id} keeps changing; try again", domain=DOMAIN
            )
        await self.store.release_run_lock(run_id)
        live = self.progress.get(run_id)
        if live is not None:
            live.update(cancelled)
        log.info("scoring run cancelled", run_id=run_id, stage=cancelled["stage"])
        return cancelled

    async def _save(self, doc: dict, **changes) -> None:
        """Writes the run's doc with `changes` if the run is still this attempt and
        running; else raises RunStopped (the doc in memory is left as it was)."""
        new = {**doc, **changes}
        expect = {"state": "running", "attempt": int(doc.get("attempt", 0))}
        if not await self.store.put_run(doc["id"], new, expect=expect):
            raise RunStopped(doc["id"])
        doc.update(new)

    async def _stage(self, doc: dict, stage: str, **counts) -> None:
        await self._save(doc, stage=stage, **counts)
        await self.store.refresh_run_lock(doc["id"], self._now())

    async def _ensure_running(self, doc: dict) -> None:
        stored = await self.store.get_run(doc["id"])
        if (
            stored is None
            or stored["state"] != "running"
            or stored.get("attempt", 0) != doc.get("attempt", 0)
        ):
            raise RunStopped(doc["id"])

    async def _wait_all(self, doc: dict, key: str) -> dict[int, bytes]:
        """Every partition's blob under `key`. Raises PartitionsMissing once
        `partition_timeout` (by the engine's clock) passes without them all, and
        RunStopped as soon as the run is no longer running (e.g. cancelled)."""
        partitions = doc["partitions"]
        started = beat = self._now()
        while True:
            parts = await self.store.load_run_stats(key)
            if len(parts) >= partitions:
                return parts
            await self._ensure_running(doc)
            now = self._now()
            if now - started > self.partition_timeout * 1_000_000:
                missing = sorted(set(range(partitions)) - set(parts))
                raise PartitionsMissing(missing, partitions, self.partition_timeout)
            if now - beat >= HEARTBEAT_MICROS:  # a long wait must not look like a crash
                await self.store.refresh_run_lock(doc["id"], now)
                beat = now
            await asyncio.sleep(0.05)

    async def execute(self, run_id: str, partition: int = 0) -> dict:
        """Does partition `partition` of the run; partition 0 also merges and writes."""
        doc = self.progress.get(run_id) or await self.store.get_run(run_id)
        if doc is None:
            raise not_found("run", run_id, domain=DOMAIN)
        started = time.perf_counter()
        try:
            if doc["state"] != "running":
                raise RunStopped(run_id)
            await self._execute(doc, partition, started)
        except RunStopped:
            log.info("scoring run stopped: no longer running", run_id=run_id, partition=partition)
            raise
        except Exception as exc:
            log.exception("scoring run failed", run_id=run_id, partition=partition)
            if partition == 0:
                why = str(exc) if isinstance(exc, PartitionsMissing) else repr(exc)
                with contextlib.suppress(RunStopped):  # cancelled meanwhile: stays so
                    await self._save(
                        doc,
                        state="failed",
                        errors=[*doc["errors"], why[:500]],
                        end_time=self._now(),
                        duration_seconds=round(time.perf_counter() - started, 3),
                    )
                    await self.store.release_run_lock(run_id)
            raise
        finally:
            self.progress.pop(run_id, None)
            if partition == 0:
                self.engine.stop_tracking(run_id)
        return doc
