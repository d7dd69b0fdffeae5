"""Replicas as real processes (`python -m services._example`) on one database and one
Redis: each timer fires once whichever replica reads it, one relay publishes at a
time, a relay lease held by a process killed with SIGKILL is taken over once it
expires, a timer due while every replica was dead fires after a restart, and SIGTERM
stops a service in order (not serving, drained, relay handed over)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pond.events.v1 import event_pb2
from pond.example.v1 import notes_pb2 as pb
from pond.example.v1 import notes_pb2_grpc

from services._example.events import STREAM
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from tests.conftest import TEST_SECRET, eventually, token

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAME = "pond.example.v1.NotesService"
LEASE = "pond:example:relay"
WAIT = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log_path: Path
    channel: grpc.aio.Channel
    stub: notes_pb2_grpc.NotesServiceStub

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), WAIT)

    async def note(self, note_id: str) -> pb.Note:
        return await self.stub.GetNote(pb.GetNoteRequest(note_id=note_id), metadata=md(),
                                       timeout=5)


def md() -> tuple:
    return call_metadata(token(Role.OPERATOR))


async def start_replica(data_dir: Path, redis_url: str, name: str) -> Replica:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        POND_MODE="embedded", POND_DATA_DIR=str(data_dir), POND_AUTH_SECRET=TEST_SECRET,
        REDIS_URL=redis_url, POND_HOST="127.0.0.1", POND_EXAMPLE_PORT=str(port),
        POND_EXAMPLE_METRICS_PORT="0", POND_EXAMPLE_REPLICA=name,
        # Both replicas read a due timer before either commits its firing.
        POND_EXAMPLE_TIMER_DELAY_SECONDS="0.05",
        POND_OUTBOX_POLL_SECONDS="0.05", POND_OUTBOX_LEASE_SECONDS="1",
        POND_EVENT_BLOCK_MS="100", POND_SHUTDOWN_GRACE="5",
        POND_LOG_LEVEL="info", POND_LOG_FORMAT="json",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    )
    for name_ in ("MONGODB_URI", "POND_MONGODB_URI", "POND_JOBS_INTERVAL_SECONDS"):
        env.pop(name_, None)
    log_path = data_dir.parent / f"{name}.log"
    with log_path.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services._example", cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    replica = Replica(name, process, port, log_path, channel,
                      notes_pb2_grpc.NotesServiceStub(channel))
    health = health_pb2_grpc.HealthStub(channel)

    async def status() -> int:
        if process.returncode is not None:
            raise AssertionError(f"{name} exited early:\n{replica.log()[-3000:]}")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                       timeout=1)
            return reply.status
        except grpc.aio.AioRpcError:
            return -1

    try:
        await eventually(status, lambda s: s == SERVING, 30, interval=0.05)
    except BaseException:
        await replica.kill()
        raise
    return replica


@asynccontextmanager
async def replicas(data_dir: Path, redis_url: str, *names: str) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for name in names:
            started.append(await start_replica(data_dir, redis_url, name))
        yield started
    finally:
        for replica in started:
            await replica.kill()
            await replica.channel.close()


async def published(redis: aioredis.Redis) -> list[tuple[str, str]]:
    """(note id, publisher) of every NoteAdded on the stream, in stream order."""
    out = []
    for _id, fields in await redis.xrange(STREAM):
        event = event_pb2.Event.FromString(fields[b"e"])
        out.append((event.subject_id, fields.get(b"p", b"").decode()))
    return out


async def published_events(redis: aioredis.Redis) -> dict[str, str]:
    """Note id by event id of every NoteAdded on the stream: an event published twice
    (at least once: a relay killed between publishing and marking it published leaves
    it to the next relay) counts once, as consumers count it. Two entries with one id
    must be the same note."""
    by_id: dict[str, str] = {}
    for _id, fields in await redis.xrange(STREAM):
        event = event_pb2.Event.FromString(fields[b"e"])
        assert by_id.setdefault(event.id, event.subject_id) == event.subject_id
    return by_id


def pid_of(holder: bytes | None) -> int:
    assert holder, "no relay holds the lease"
    return int(holder.decode().split(":")[1])


async def test_each_timer_fires_once_and_one_relay_publishes_at_a_time(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis
):
    async with replicas(tmp_path / "data", redis_url, "a", "b") as (a, b):
        ids = [f"n{i}" for i in range(16)]
        for i, note_id in enumerate(ids):  # half the writes on each replica
            await (a, b)[i % 2].stub.AddNote(
                pb.AddNoteRequest(note_id=note_id, remind_in_seconds=0.2), metadata=md(),
                timeout=5)
        # Both replicas poll the same due timers; each fires once (the firing that
        # committed is the only one, whichever replica made it).
        for note_id in ids:
            note = await eventually(lambda n=note_id: a.note(n), lambda n: n.reminders >= 1, WAIT)
            assert note.reminders == 1 and note.reminded_by in ("a", "b")
        # Every event once, all by the one relay holding the lease.
        events = await eventually(lambda: published(redis), lambda e: len(e) >= len(ids), WAIT)
        assert sorted(n for n, _p in events) == sorted(ids)
        [leader] = {p for _n, p in events}
        assert (await redis.get(LEASE)).decode() == leader

        # The leader dies (SIGKILL: its lease is left to expire); the other takes over.
        dead, survivor = (a, b) if pid_of(await redis.get(LEASE)) == a.process.pid else (b, a)
        await dead.kill()
        await survivor.stub.AddNote(pb.AddNoteRequest(note_id="after"), metadata=md(), timeout=5)
        events = await eventually(lambda: published(redis),
                                  lambda e: "after" in {n for n, _p in e}, WAIT)
        assert pid_of(await redis.get(LEASE)) == survivor.process.pid
        assert sorted(n for n, _p in events) == sorted([*ids, "after"])  # none twice
        publishers = [p for _n, p in events]
        assert publishers[-1] != leader and len(set(publishers)) == 2


async def test_after_every_replica_was_killed_a_due_timer_fires_and_the_lease_moves_on(
    tmp_path: Path, redis_url: str, redis: aioredis.Redis
):
    data_dir = tmp_path / "data"
    async with replicas(data_dir, redis_url, "first") as (first,):
        await first.stub.AddNote(pb.AddNoteRequest(note_id="t1", remind_in_seconds=1.0),
                                 metadata=md(), timeout=5)
        due = time.time() + 1.0
        await eventually(lambda: redis.get(LEASE), lambda v: v is not None, WAIT)
        await first.kill()
        assert (await first.process.wait()) == -signal.SIGKILL
    assert await redis.get(LEASE)  # the dead relay's lease, still there for a moment
    # Nothing runs while the timer comes due.
    await eventually(lambda: asyncio.sleep(0, time.time()), lambda now: now > due, WAIT)
    async with replicas(data_dir, redis_url, "second") as (second,):
        note = await eventually(lambda: second.note("t1"), lambda n: n.reminders >= 1, WAIT)
        assert (note.reminders, note.reminded_by) == (1, "second")
        # The killed relay's lease expired; the new process holds it and publishes.
        await second.stub.AddNote(pb.AddNoteRequest(note_id="t2"), metadata=md(), timeout=5)
        events = await eventually(lambda: published(redis),
                                  lambda e: {"t1", "t2"} <= {n for n, _p in e}, WAIT)
        holder = await redis.get(LEASE)
        assert pid_of(holder) == second.process.pid
        assert [p for n, p in events if n == "t2"] == [holder.decode()]
        # The kill may land between the first relay's publish of t1 and its marking it
        # published: then the second relay publishes it again, as the same event.
        assert sorted((await published_events(redis)).values()) == ["t1", "t2"]


async def test_sigterm_stops_in_order(tmp_path: Path, redis_url: str, redis: aioredis.Redis):
    async with replicas(tmp_path / "data", redis_url, "only") as (only,):
        health = health_pb2_grpc.HealthStub(only.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await asyncio.wait_for(watch.read(), WAIT)).status == SERVING
        slow = asyncio.ensure_future(only.stub.AddNote(
            pb.AddNoteRequest(note_id="in-flight", delay_seconds=1.0), metadata=md(), timeout=10))
        await eventually(lambda: asyncio.sleep(0, only.log()),
                         lambda log: "adding a note slowly" in log, WAIT)
        only.process.send_signal(signal.SIGTERM)

        # 1. Not serving at once, 2. the call in flight finishes, 3. its event is
        # published before the relay lets go, 4. the lease is released (a successor
        # need not wait for it to expire), 5. exit 0.
        assert (await asyncio.wait_for(watch.read(), WAIT)).status == NOT_SERVING
        watch.cancel()
        assert (await slow).id == "in-flight"
        assert await asyncio.wait_for(only.process.wait(), WAIT) == 0, only.log()[-3000:]
        assert [n for n, _p in await published(redis)] == ["in-flight"]
        assert await redis.get(LEASE) is None
        lines = only.log()
        steps = ['"service stopping"', '"stopped"', '"outbox relay released its lease"',
                 '"service stopped"']
        at = [lines.find(step) for step in steps]
        assert -1 not in at and at == sorted(at), (at, lines[-3000:])
        assert '"level":"error"' not in lines
