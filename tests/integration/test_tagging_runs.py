"""Scoring runs that cannot finish: a partition that never reports fails the run
after POND_TAGGING_PARTITION_TIMEOUT_SECONDS, naming it, and an operator can cancel
a run; either way the run lock is free for the next run. Over a real grpc.aio
tagging service fed by a real member service (see test_tagging_api.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from pond.tagging.v1 import tagging_pb2 as pb

from services.runtime.auth import Role
from services.tagging.runs import RunStopped
from tests.conftest import eventually
from tests.integration import test_tagging_api as tagging_api
from tests.integration.test_tagging_api import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    Stack,
    fails,
    populate,
    run_to_end,
    watch,
)

stack = tagging_api.stack  # the fixture: a member and a tagging service on one Redis
CANCELLED = pb.RUN_STATE_CANCELLED


async def get_run(s: Stack, run_id: str) -> pb.ScoringRun:
    return await s.stub.GetScoringRun(pb.GetScoringRunRequest(run_id=run_id), metadata=s.md())


async def cancel(s: Stack, run_id: str, role: Role = Role.OPERATOR) -> pb.ScoringRun:
    return await s.stub.CancelScoringRun(
        pb.CancelScoringRunRequest(run_id=run_id), metadata=s.md(role)
    )


async def start_waiting_for_partition_1(s: Stack) -> pb.ScoringRun:
    """A two-partition run whose partition 1 (a worker) never starts: partition 0
    scores its share and then waits for the other's statistics."""
    started = await s.stub.StartScoringRun(
        pb.StartScoringRunRequest(partitions=2), metadata=s.md()
    )
    assert (started.state, started.partitions) == (RUNNING, 2)
    await eventually(lambda: get_run(s, started.id), lambda r: r.stage == "score")
    return started


async def test_a_partition_that_never_reports_fails_the_run_and_frees_the_lock(stack: Stack):
    await stack.restart(tagging_partition_timeout_seconds=5)
    await populate(stack, [1, 2])
    started = await start_waiting_for_partition_1(stack)
    await fails(
        stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_IN_PROGRESS",
    )

    async def later() -> pb.ScoringRun:
        stack.clock.advance(seconds=6)  # the timeout runs on the service's clock
        return await get_run(stack, started.id)

    failed = await eventually(later, lambda r: r.state != RUNNING)
    assert failed.state == FAILED
    assert list(failed.errors) == ["partition 1 of 2 did not report within 5 s"]
    assert failed.end_time.seconds > 0
    # The lock is free: the next run starts at once and succeeds.
    after = await run_to_end(stack)
    assert (after.state, after.members_scored) == (SUCCEEDED, 2)


async def test_an_operator_cancels_a_run_and_the_lock_is_free_at_once(stack: Stack):
    ids = await populate(stack, [1, 2])
    started = await start_waiting_for_partition_1(stack)
    watching = asyncio.create_task(watch(stack, started.id))
    await fails(cancel(stack, started.id, Role.GUIDE), grpc.StatusCode.PERMISSION_DENIED)

    cancelled = await cancel(stack, started.id)
    assert (cancelled.id, cancelled.state, cancelled.stage) == (started.id, CANCELLED, "score")
    assert cancelled.end_time.seconds > 0 and list(cancelled.errors) == []
    assert (await get_run(stack, started.id)).state == CANCELLED
    assert (await asyncio.wait_for(watching, 10))[-1].state == CANCELLED
    # A worker for the missing partition that turns up late stops at once.
    with pytest.raises(RunStopped):
        await stack.tagging.runner.execute(started.id, 1)

    after = await run_to_end(stack)
    assert (after.state, after.members_scored) == (SUCCEEDED, len(ids))
    # The cancelled run's partition 0 stopped: it wrote nothing over its record.
    assert await get_run(stack, started.id) == cancelled
    runs = await stack.stub.ListScoringRuns(pb.ListScoringRunsRequest(), metadata=stack.md())
    assert [(r.id, r.state) for r in runs.runs] == [
        (after.id, SUCCEEDED),
        (started.id, CANCELLED),
    ]

    # Cancelling again returns the cancelled run; a finished run cannot be cancelled.
    assert await cancel(stack, started.id) == cancelled
    await fails(cancel(stack, after.id), grpc.StatusCode.FAILED_PRECONDITION, "RUN_FINISHED")
    await fails(cancel(stack, "run-nope"), grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")
    for bad in ("", "r" * 65):
        v = await fails(cancel(stack, bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert [f for f, _ in v] == ["run_id"]


async def test_a_run_writing_its_result_cannot_be_cancelled(stack: Stack, monkeypatch):
    await populate(stack, [1, 2])
    runner = stack.tagging.runner
    gate, writing = asyncio.Event(), asyncio.Event()
    real_write = runner._write

    async def held(*args):
        writing.set()
        await gate.wait()
        return await real_write(*args)

    monkeypatch.setattr(runner, "_write", held)
    started = await stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md())
    await asyncio.wait_for(writing.wait(), 10)
    await fails(cancel(stack, started.id), grpc.StatusCode.FAILED_PRECONDITION, "RUN_WRITING")
    gate.set()
    done = (await watch(stack, started.id))[-1]
    assert done.state == SUCCEEDED


async def test_the_nightly_scoring_run_is_a_job_of_the_service(stack: Stack):
    """At 04:00 in the brand's time zone the service starts a run over everyone by
    itself (its host's scheduled job; no CronJob calling StartScoringRun)."""
    await stack.restart(jobs_enabled=True)
    await populate(stack, [1, 2])

    async def runs() -> list[pb.ScoringRun]:
        reply = await stack.stub.ListScoringRuns(pb.ListScoringRunsRequest(), metadata=stack.md())
        return list(reply.runs)

    assert await runs() == []
    stack.clock.set(stack.clock.now().replace(hour=20, minute=1))  # 04:01 in Shanghai
    stack.tagging.host.wake_timers_and_jobs()
    [run] = await eventually(runs, lambda rs: len(rs) == 1 and rs[0].state == SUCCEEDED)
    assert run.members_total == 2 and not run.segment_id
