"""The runtime's service host, seen through a service built on it (services/_example,
the template): events applied once per consumer with the request id carried across
the hop, durable timers (after their time, retried, once), scheduled jobs once per
occurrence across replicas, health from a required task, supervision, dead-letter
replay and the event metrics. Real gRPC servers on free ports, real SQLite and Redis,
a ManualClock instead of sleeps."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pond.events.v1 import event_pb2
from pond.example.v1 import notes_pb2 as pb
from pond.example.v1 import notes_pb2_grpc
from prometheus_client import REGISTRY

from services._example.events import STREAM, NoteAdded
from services._example.server import SPEC, build
from services._example.settings import ExampleSettings
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.clock import ManualClock
from services.runtime.deadletters import list_dead_letters, replay_dead_letters
from services.runtime.eventbus import DEAD_SUFFIX, make_event
from services.runtime.host import HostContext, HostOptions, Service, ServiceHost, ServiceSpec
from services.runtime.host import start_service as start_host
from services.runtime.jobs import Job
from services.runtime.redis_health import Backoff
from services.runtime.schedule import Schedule
from tests.conftest import TEST_SECRET, eventually, token

SERVICE_NAME = "pond.example.v1.NotesService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST = HostOptions(health_seconds=0.05, metrics_seconds=0.05, timer_poll_seconds=0.05,
                   job_poll_seconds=0.05, restart_backoff=lambda: Backoff(0.05, 0.2))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def settings_for(tmp_path, redis_url: str, **overrides) -> ExampleSettings:
    values = dict(data_dir=tmp_path, auth_secret=TEST_SECRET, redis_url=redis_url, mode="test",
                  outbox_poll_seconds=0.05, event_claim_idle_ms=50, event_max_deliveries=2,
                  event_block_ms=50)
    values.update(overrides)
    return ExampleSettings(**values)


class Example:
    def __init__(self, host: ServiceHost) -> None:
        self.host = host
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
        self.stub = notes_pb2_grpc.NotesServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @staticmethod
    def md(request_id: str = "") -> tuple:
        return call_metadata(token(Role.OPERATOR), request_id=request_id)

    async def note(self, note_id: str) -> pb.Note:
        return await self.stub.GetNote(pb.GetNoteRequest(note_id=note_id), metadata=self.md())

    async def status(self, name: str = SERVICE_NAME) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=name))
        return reply.status

    async def close(self) -> None:
        await self.channel.close()
        await self.host.stop(0)


@pytest_asyncio.fixture
async def start(tmp_path, redis_url: str, redis) -> AsyncIterator[Callable]:
    """Starts example services (replicas share the data dir, hence the database)."""
    started: list[Example] = []

    async def start_one(clock: ManualClock, spec: ServiceSpec = SPEC, **overrides) -> Example:
        host = await start_host(spec, settings_for(tmp_path, redis_url, **overrides),
                                clock=clock, port=0, metrics=False, options=FAST)
        started.append(Example(host))
        return started[-1]

    try:
        yield start_one
    finally:
        for example in started:
            await example.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))  # 10:00 in Shanghai


async def test_an_event_is_applied_once_per_consumer_with_its_request_id(
    start, clock: ManualClock, redis: aioredis.Redis
):
    ex = await start(clock)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="n1", text="hi"),
                          metadata=ex.md(request_id="req-add-1"))
    note = await eventually(lambda: ex.note("n1"), lambda n: n.seen == 1)
    # The consumer ran with the request id of the call that caused the event.
    assert note.seen_request_id == "req-add-1"
    [(_id, fields)] = await redis.xrange(STREAM)
    assert event_pb2.Event.FromString(fields[b"e"]).request_id == "req-add-1"

    # The relay republishes it (a crash between publish and mark): the processed mark
    # in the store keeps it applied once (the group keeps no done keys in Redis: its
    # handlers' marks are the record).
    assert await redis.keys("pond:consumed:*") == []
    before = sample("pond_event_handler_outcomes_total", consumer="example",
                    outcome="already_applied")
    await redis.xadd(STREAM, {b"e": fields[b"e"]})
    await eventually(
        lambda: asyncio.sleep(0, sample("pond_event_handler_outcomes_total", consumer="example",
                                        outcome="already_applied")),
        lambda n: n == before + 1)
    assert (await ex.note("n1")).seen == 1


async def test_a_timer_fires_after_its_time_retries_failures_and_fires_once(
    start, clock: ManualClock
):
    ex = await start(clock)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="later", remind_in_seconds=3600,
                                            failing_reminders=2), metadata=ex.md())
    # Not before its time: a reminder due now fires, the later one (due after it,
    # fired soonest first) stays.
    clock.advance(seconds=3599)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="now", remind_in_seconds=0.001),
                          metadata=ex.md())
    clock.advance(seconds=0.5)
    ex.host.wake_timers_and_jobs()
    await eventually(lambda: ex.note("now"), lambda n: n.reminders == 1)
    assert (await ex.note("later")).reminder_attempts == 0

    clock.advance(seconds=1)
    ex.host.wake_timers_and_jobs()
    await eventually(lambda: ex.note("later"), lambda n: n.reminder_attempts == 1)
    # A failed firing is tried again after a backoff (1 s, then 2 s) on the clock.
    for attempts, wait in ((2, 1), (3, 2)):
        clock.advance(seconds=wait)
        ex.host.wake_timers_and_jobs()
        await eventually(lambda: ex.note("later"), lambda n, a=attempts: n.reminder_attempts == a)
    note = await eventually(lambda: ex.note("later"), lambda n: n.reminders == 1)
    assert note.reminded_by
    # Fired means gone: later polls do not fire it again.
    clock.advance(days=1)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="marker", remind_in_seconds=0.001),
                          metadata=ex.md())
    clock.advance(seconds=1)
    ex.host.wake_timers_and_jobs()
    await eventually(lambda: ex.note("marker"), lambda n: n.reminders == 1)
    assert (await ex.note("later")).reminders == 1
    assert (await ex.note("later")).reminder_attempts == 3


async def test_a_required_task_down_makes_the_service_not_serving_until_it_is_back(
    start, clock: ManualClock
):
    ex = await start(clock)
    assert await ex.status() == SERVING
    restarts = sample("pond_task_restarts_total", service="example", task="heartbeat")
    await ex.stub.SetHeartbeat(pb.SetHeartbeatRequest(failing=True), metadata=ex.md())
    await eventually(ex.status, lambda s: s == NOT_SERVING)
    assert await ex.status("") == NOT_SERVING
    assert await ex.status("liveness") == SERVING  # down, not dead: no restart wanted
    # The supervisor restarts it (with backoff), counting each crash.
    await eventually(
        lambda: asyncio.sleep(0, sample("pond_task_restarts_total", service="example",
                                        task="heartbeat")),
        lambda n: n >= restarts + 2)
    await ex.stub.SetHeartbeat(pb.SetHeartbeatRequest(failing=False), metadata=ex.md())
    await eventually(ex.status, lambda s: s == SERVING)
    assert await ex.status("store") == SERVING and await ex.status("redis") == SERVING


async def test_a_scheduled_job_runs_once_per_occurrence_across_replicas(
    start, clock: ManualClock, redis: aioredis.Redis
):
    runs: list[str] = []
    release = asyncio.Event()

    async def gated_build(ctx: HostContext) -> Service:
        service = await build(ctx)

        async def gated() -> int:
            runs.append(ctx.settings.example_replica)
            await release.wait()
            return len(runs)

        service.jobs = [Job("gated", Schedule.hourly(), gated)]
        return service

    spec = ServiceSpec("example", ExampleSettings, gated_build, SPEC.port, SPEC.metrics_port)
    replicas = [await start(clock, spec, example_replica=name) for name in ("a", "b")]

    def parts() -> dict[str, float]:
        return {part: sample("pond_job_occurrences_total", service="example", job="gated",
                             part=part) for part in ("ran", "taken")}

    for occurrence in (1, 2):
        before = parts()
        clock.advance(hours=1)
        for ex in replicas:
            ex.host.wake_timers_and_jobs()
        # Both replicas reach the occurrence while the job still runs: one runs it,
        # the other finds it taken.
        await eventually(lambda: asyncio.sleep(0, parts()),
                         lambda p, b=before: p["ran"] == b["ran"] + 1
                         and p["taken"] >= b["taken"] + 1)
        assert len(runs) == occurrence
        release.set()
        due = datetime(2026, 3, 1, 2 + occurrence, 0, tzinfo=UTC)
        key = f"pond:example:job:gated:{int(due.timestamp())}"
        await eventually(lambda k=key: redis.get(k), lambda v: v == b"done")
        release.clear()
    assert len(runs) == 2


async def test_dead_letters_are_counted_and_replayed_once_the_cause_is_fixed(
    start, clock: ManualClock, redis: aioredis.Redis
):
    ex = await start(clock)
    dead = sample("pond_events_dead_lettered_total", stream=STREAM, group="example")
    redelivered = sample("pond_events_redelivered_total", stream=STREAM, group="example")
    # An event about a note that is not there: the handler fails, is tried again,
    # and given up on after POND_EVENT_MAX_DELIVERIES (2 here).
    envelope = make_event("example", "n9", NoteAdded(note_id="n9"), clock.now())
    await redis.xadd(STREAM, {b"e": envelope.SerializeToString()})
    await eventually(lambda: redis.xlen(STREAM + DEAD_SUFFIX), lambda n: n == 1)
    # Counted once the consumer has the reply of the step that moved it (a moment
    # after the dead-letter stream shows it).
    await eventually(
        lambda: asyncio.sleep(0, sample("pond_events_dead_lettered_total", stream=STREAM,
                                        group="example")),
        lambda n: n == dead + 1)
    assert sample("pond_events_redelivered_total", stream=STREAM, group="example") > redelivered
    [letter] = await list_dead_letters(redis, STREAM, group="example")
    assert (letter.event_id, letter.event_type) == (envelope.id, "pond.example.v1.NoteAdded")
    assert "no note" in letter.error

    await ex.stub.AddNote(pb.AddNoteRequest(note_id="n9"), metadata=ex.md())  # the cause, fixed
    await eventually(lambda: ex.note("n9"), lambda n: n.seen == 1)
    assert await replay_dead_letters(redis, STREAM, group="example") == 1
    await eventually(lambda: ex.note("n9"), lambda n: n.seen == 2)
    assert await redis.xlen(STREAM + DEAD_SUFFIX) == 0
    # Replayed means applied: a second replay finds nothing.
    assert await replay_dead_letters(redis, STREAM, group="example") == 0


async def test_outbox_backlog_and_consumer_lag_are_measured(
    start, clock: ManualClock, redis: aioredis.Redis
):
    ex = await start(clock, outbox_relay_enabled=False)
    for i in range(3):
        await ex.stub.AddNote(pb.AddNoteRequest(note_id=f"b{i}"), metadata=ex.md())
    await eventually(lambda: asyncio.sleep(0, sample("pond_outbox_backlog", service="example")),
                     lambda n: n == 3)
    assert sample("pond_outbox_oldest_seconds", service="example") >= 0
    await eventually(
        lambda: asyncio.sleep(0, REGISTRY.get_sample_value(
            "pond_consumer_pending", {"stream": STREAM, "group": "example"})),
        lambda n: n == 0)


async def test_stop_reports_not_serving_first_and_leaves_no_lease(
    start, clock: ManualClock, redis: aioredis.Redis
):
    ex = await start(clock)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="s1"), metadata=ex.md())
    await eventually(lambda: redis.xlen(STREAM), lambda n: n == 1)
    assert await redis.get("pond:example:relay")  # the relay leads...
    watch = ex.health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert (await watch.read()).status == SERVING
    stopping = asyncio.create_task(ex.host.stop(2))
    assert (await watch.read()).status == NOT_SERVING
    watch.cancel()
    await stopping
    assert not await redis.get("pond:example:relay")  # ...and hands over at once on stop


async def test_the_relay_runs_its_lua_from_the_service_script_registry(
    start, clock: ManualClock, redis: aioredis.Redis
):
    """The lease and the fenced publish are the service's registered scripts (one way to
    run Lua): after the server lost its scripts, the relay loads them again and goes on."""
    ex = await start(clock)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="f1"), metadata=ex.md())
    await eventually(lambda: ex.note("f1"), lambda n: n.seen == 1)
    assert ex.host.scripts is not None and ex.host.scripts.prefix == "pond:example:"
    publish = ex.host.scripts["outbox_publish"]
    assert await redis.script_exists(publish.sha) == [True]
    reloads = publish.reloads
    await redis.script_flush()  # as after a Redis restart
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="f2"), metadata=ex.md())
    await eventually(lambda: ex.note("f2"), lambda n: n.seen == 1)
    assert publish.reloads == reloads + 1
    assert await redis.xlen(STREAM) == 2
    assert await redis.get("pond:example:relay")


def test_schedules_are_on_the_brand_clock():
    shanghai = "Asia/Shanghai"
    at_ten = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)  # 10:00 local
    daily = Schedule.daily(datetime(2000, 1, 1, 3, 0).time())
    assert daily.next_after(at_ten, shanghai) == datetime(2026, 3, 1, 19, 0, tzinfo=UTC)
    assert Schedule.hourly(minute=5).next_after(at_ten, shanghai) == at_ten + timedelta(minutes=5)
    with pytest.raises(ValueError):
        Schedule.every(2 * 86400)


async def test_the_dead_letter_command_lists_and_replays(redis_url: str, redis: aioredis.Redis):
    envelope = make_event("example", "n1", NoteAdded(note_id="n1"), datetime.now(UTC))
    await redis.xadd(STREAM + DEAD_SUFFIX, {b"e": envelope.SerializeToString(),
                                            b"error": b"boom", b"group": b"example",
                                            b"source_id": b"1-0"})
    env = {**os.environ, "REDIS_URL": redis_url}

    async def command(*args: str) -> list[dict]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.runtime.deadletters", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return [json.loads(line) for line in out.decode().splitlines()]

    [listed] = await command("list", "--stream", STREAM, "--group", "example")
    assert (listed["event_id"], listed["error"]) == (envelope.id, "boom")
    assert await command("replay", "--stream", STREAM, "--group", "other") == [{"replayed": 0}]
    assert await command("replay", "--stream", STREAM, "--group", "example") == [{"replayed": 1}]
    [(_id, fields)] = await redis.xrange(STREAM)
    assert event_pb2.Event.FromString(fields[b"e"]).id == envelope.id
    assert await redis.xlen(STREAM + DEAD_SUFFIX) == 0


async def test_processed_marks_are_pruned_after_their_retention(
    start, clock: ManualClock, redis: aioredis.Redis
):
    ex = await start(clock, processed_retention_days=7)
    await ex.stub.AddNote(pb.AddNoteRequest(note_id="p1"), metadata=ex.md())
    await eventually(lambda: ex.note("p1"), lambda n: n.seen == 1)
    [(_id, fields)] = await redis.xrange(STREAM)
    # Eight days on, the hourly prune job has removed the mark: an event redelivered
    # that late would be applied again. Marks are kept
    # for the window in which redeliveries happen, not forever.
    pruned = sample("pond_job_runs_total", service="example", job="prune-records",
                    outcome="succeeded")
    clock.advance(days=8)
    ex.host.wake_timers_and_jobs()
    await eventually(
        lambda: asyncio.sleep(0, sample("pond_job_runs_total", service="example",
                                        job="prune-records", outcome="succeeded")),
        lambda n: n == pruned + 1)
    await redis.xadd(STREAM, {b"e": fields[b"e"]})
    await eventually(lambda: ex.note("p1"), lambda n: n.seen == 2)


async def test_a_store_that_does_not_answer_makes_the_service_not_serving(
    start, clock: ManualClock, monkeypatch
):
    ex = await start(clock)
    assert await ex.status() == SERVING
    store = ex.host.service.store

    async def broken(*_args: object) -> bool:
        raise OSError("disk gone")

    monkeypatch.setattr(store, "is_processed", broken)  # the host's probe read
    await eventually(ex.status, lambda s: s == NOT_SERVING)
    assert await ex.status("store") == NOT_SERVING
    assert await ex.status("liveness") == SERVING
    monkeypatch.undo()
    await eventually(ex.status, lambda s: s == SERVING)


async def test_a_stop_that_fails_midway_still_closes_the_stores(
    start, clock: ManualClock, monkeypatch
):
    """A step of the stop raising (here the health publish; in the wild a log line to a
    closed stdout) must still close the stores: their SQLite threads would otherwise
    keep the process alive after its main has returned."""
    ex = await start(clock)
    stores = list(ex.host._stores)
    assert stores

    async def broken() -> None:
        raise BrokenPipeError("stdout is gone")

    monkeypatch.setattr(ex.host.health, "publish", broken)
    with pytest.raises(BrokenPipeError):
        await ex.host.stop(0)
    assert not ex.host._stores
    for store in stores:  # closed: no thread of its connections is left running
        inner = getattr(store, "inner", store)
        assert not inner._writer.conn._thread.is_alive()
        assert not inner._r._thread.is_alive()
