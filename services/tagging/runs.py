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

An operator may cancel a run (`cancel`, from any replica): the run's record is marked
cancelled and the lock released at once. Every write to the run's record is guarded by
the version it was read at (a cancel or a resume in between wins; the partition then
finds the run no longer running), and the waits poll the record, so each partition
stops at its next step; the one step a cancel is refused in is "write" (partition 0
applying the merged result, seconds), so a cancelled run never writes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import structlog

from services.runtime.clock import epoch_micros
from services.runtime.documents import Conflict
from services.runtime.errors import failed_precondition, not_found
from services.runtime.ids import new_id
from services.tagging.catalogue import DOMAIN
from services.tagging.domain.scoring_runs import CANCELLED, FAILED, SUCCEEDED, Run
from services.tagging.engine import TagEngine
from services.tagging.partition import PartitionWork

log = structlog.get_logger("pond.tagging.runs")
STALE_LOCK_SECONDS = 300
HEARTBEAT_MICROS = 10_000_000  # a waiting partition refreshes the lock this often
WATCH_POLL_SECONDS = 0.1


class RunStopped(Exception):
    """The run was cancelled (or resumed or ended elsewhere) while this partition
    worked on it: the partition stops without touching the run's record."""


class _LockHeld(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


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
        self.progress: dict[str, Run] = {}  # live records of runs in this process
        self.rescore_delay = rescore_delay
        self._rescore_wanted = False
        self._rescore_task: asyncio.Task | None = None
        self._run_tasks: set[asyncio.Task] = set()  # partitions 0 started by start()

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
                run = await self._begin()
            except _LockHeld:
                delay = max(self.rescore_delay, 5.0)  # another run holds the lock
                continue
            delay = self.rescore_delay
            # A failed run is recorded and logged by execute; a change made while it
            # ran (the loop's condition) gets a new run.
            with contextlib.suppress(Exception):
                await self.execute(run.id)

    async def close(self) -> None:
        """Stops a pending or running rescore and the runs started here (a running
        one keeps its lock and is resumable, like any interrupted run)."""
        tasks = [*self._run_tasks]
        if self._rescore_task is not None:
            tasks.append(self._rescore_task)
        self._rescore_task = None
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- what the servicer asks for --
    async def start(
        self, *, segment_id: str = "", partitions: int = 1, resume_run_id: str = ""
    ) -> Run:
        """Begins a run (see begin) and executes its partition 0 here, in the
        background; workers run the others (services.tagging.worker)."""
        run = await self.begin(
            segment_id=segment_id, partitions=partitions, resume_run_id=resume_run_id
        )
        task = asyncio.create_task(self.execute(run.id, 0), name=f"tagging-run-{run.id}")
        self._run_tasks.add(task)
        task.add_done_callback(self._run_ended)
        return replace(run)

    def _run_ended(self, task: asyncio.Task) -> None:
        self._run_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # logged and recorded in the run's record by execute

    async def get(self, run_id: str) -> Run:
        """The run as it stands (a copy: live runs change)."""
        live = self.progress.get(run_id)
        if live is not None:
            return replace(live)
        run = await self.store.load_run(run_id)
        if run is None:
            raise not_found("run", run_id, domain=DOMAIN)
        return run

    async def watch(self, run_id: str) -> AsyncIterator[Run]:
        """The run at once and at each change, until it is no longer running."""
        last = None
        while True:
            run = await self.get(run_id)
            if run != last:
                yield run
                last = run
            if not run.running:
                return
            await asyncio.sleep(WATCH_POLL_SECONDS)

    async def recent(self, before_id: str, limit: int) -> list[Run]:
        """Newest first, those started before `before_id` when given."""
        return await self.store.recent_runs(before_id, limit)

    def _now(self) -> int:
        return epoch_micros(self.engine.clock.now())

    async def begin(
        self, *, segment_id: str = "", partitions: int = 1, resume_run_id: str = ""
    ) -> Run:
        """Takes the one-run lock and records the run; FAILED_PRECONDITION while
        another run holds it."""
        if segment_id and segment_id not in self.engine.segments:
            raise not_found("segment", segment_id, domain=DOMAIN)
        try:
            return await self._begin(
                segment_id=segment_id, partitions=partitions, resume_run_id=resume_run_id
            )
        except _LockHeld as held:
            raise failed_precondition(
                "RUN_IN_PROGRESS",
                f"scoring run {held.holder} is running",
                domain=DOMAIN,
                run_id=held.holder,
            ) from None

    async def _begin(
        self, *, segment_id: str = "", partitions: int = 1, resume_run_id: str = ""
    ) -> Run:
        if resume_run_id:
            old = await self.store.load_run(resume_run_id)
            if old is None:
                raise not_found("run", resume_run_id, domain=DOMAIN)
            if old.state == SUCCEEDED:
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
            segment_id, partitions = old.segment_id, old.partitions
            attempt = old.attempt + 1
        else:
            attempt = 0
        run_id = resume_run_id or new_id("run")
        holder = await self.store.acquire_run_lock(
            run_id, self._now(), STALE_LOCK_SECONDS * 1_000_000
        )
        if holder != run_id:
            raise _LockHeld(holder)
        if not segment_id and not resume_run_id:
            self._rescore_wanted = False  # this run scores everyone with the rules as they are
        run = Run(
            run_id,
            segment_id=segment_id,
            partitions=partitions,
            start_time=self._now(),
            attempt=attempt,
        )
        await self.store.create_run(run)
        self.progress[run_id] = run
        return run

    async def cancel(self, run_id: str) -> Run:
        """Marks a running run cancelled and frees the lock; see the module doc."""
        for _ in range(10):  # a partition moving on between our read and write: again
            run = await self.store.load_run(run_id)
            if run is None:
                raise not_found("run", run_id, domain=DOMAIN)
            if run.state == CANCELLED:
                return run
            if not run.running:
                raise failed_precondition(
                    "RUN_FINISHED", f"scoring run {run_id} {run.state}", domain=DOMAIN
                )
            if run.stage == "write":
                raise failed_precondition(
                    "RUN_WRITING",
                    f"scoring run {run_id} is writing its results and ends in a moment",
                    domain=DOMAIN,
                    run_id=run_id,
                )
            now = self._now()
            cancelled = replace(
                run,
                state=CANCELLED,
                end_time=now,
                duration_seconds=round(max(0, now - run.start_time) / 1e6, 3),
            )
            try:  # a partition moving on (to "write", say) meanwhile wins
                await self.store.update_run(cancelled)
                break
            except Conflict:
                continue
        else:
            raise failed_precondition(
                "RUN_CHANGING", f"scoring run {run_id} keeps changing; try again", domain=DOMAIN
            )
        await self.store.release_run_lock(run_id)
        live = self.progress.get(run_id)
        if live is not None:
            _assign(live, cancelled)
        log.info("scoring run cancelled", run_id=run_id, stage=cancelled.stage)
        return cancelled

    async def _save(self, run: Run, **changes) -> None:
        """Writes the run's record with `changes` if the run is still this attempt
        and running; else raises RunStopped (the record in memory is left as it was)."""
        if not run.running:  # cancelled here: `run` is the live record cancel updated
            raise RunStopped(run.id)
        new = replace(run, **changes)
        for _ in range(2):
            try:
                await self.store.update_run(new)
            except Conflict:
                stored = await self.store.load_run(run.id)
                if stored is None or not stored.running or stored.attempt != run.attempt:
                    raise RunStopped(run.id) from None
                new.revision = stored.revision  # written meanwhile, still ours: again
                continue
            _assign(run, new)
            return
        raise RunStopped(run.id)

    async def _stage(self, run: Run, stage: str, **counts) -> None:
        await self._save(run, stage=stage, **counts)
        await self.store.refresh_run_lock(run.id, self._now())

    async def _ensure_running(self, run: Run) -> None:
        stored = await self.store.load_run(run.id)
        if stored is None or not stored.running or stored.attempt != run.attempt:
            raise RunStopped(run.id)

    async def _wait_all(self, run: Run, key: str) -> dict[int, bytes]:
        """Every partition's blob under `key`. Raises PartitionsMissing once
        `partition_timeout` (by the engine's clock) passes without them all, and
        RunStopped as soon as the run is no longer running (e.g. cancelled)."""
        partitions = run.partitions
        started = beat = self._now()
        while True:
            parts = await self.store.load_run_stats(key)
            if len(parts) >= partitions:
                return parts
            await self._ensure_running(run)
            now = self._now()
            if now - started > self.partition_timeout * 1_000_000:
                missing = sorted(set(range(partitions)) - set(parts))
                raise PartitionsMissing(missing, partitions, self.partition_timeout)
            if now - beat >= HEARTBEAT_MICROS:  # a long wait must not look like a crash
                await self.store.refresh_run_lock(run.id, now)
                beat = now
            await asyncio.sleep(0.05)

    async def execute(self, run_id: str, partition: int = 0) -> Run:
        """Does partition `partition` of the run; partition 0 also merges and writes."""
        run = self.progress.get(run_id) or await self.store.load_run(run_id)
        if run is None:
            raise not_found("run", run_id, domain=DOMAIN)
        started = time.perf_counter()
        try:
            if not run.running:
                raise RunStopped(run_id)
            await self._execute(run, partition, started)
        except RunStopped:
            log.info("scoring run stopped: no longer running", run_id=run_id, partition=partition)
            raise
        except Exception as exc:
            log.exception("scoring run failed", run_id=run_id, partition=partition)
            if partition == 0:
                why = str(exc) if isinstance(exc, PartitionsMissing) else repr(exc)
                with contextlib.suppress(RunStopped):  # cancelled meanwhile: stays so
                    await self._save(
                        run,
                        state=FAILED,
                        errors=[*run.errors, why[:500]],
                        end_time=self._now(),
                        duration_seconds=round(time.perf_counter() - started, 3),
                    )
                    await self.store.release_run_lock(run_id)
            raise
        finally:
            self.progress.pop(run_id, None)
            if partition == 0:
                self.engine.stop_tracking(run_id)
        return run


def _assign(run: Run, values: Run) -> None:
    """`run` (the live record others hold) takes every field of `values`."""
    for name in Run.__dataclass_fields__:
        setattr(run, name, getattr(values, name))
