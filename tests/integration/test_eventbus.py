"""The event bus against a real Redis-compatible server (embedded Valkey, or REDIS_URL):
consumer groups, ack after the effect, done-markers, XAUTOCLAIM reclaim after a
crash, dead-lettering, and one stream feeding several groups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as ev

from services.runtime.eventbus import (
    DEAD_SUFFIX,
    EventConsumer,
    make_event,
    publish,
    stream_for,
)
from services.runtime.leases import Leases
from services.runtime.outbox import OutboxRelay
from services.runtime.redis_scripts import ScriptRegistry
from tests.conftest import eventually

STREAM = stream_for("test")
DEAD = STREAM + DEAD_SUFFIX
WAIT_SECONDS = 10.0

# Records an effect once per event id, atomically: the marker and the counter move
# together or not at all, so a redelivered event cannot count twice.
APPLY_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  return redis.call('INCR', KEYS[2])
end
return 0
"""


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so the consumer cannot
    treat it as a handler failure and it escapes poll() before the ack."""


def envelope(member_id: str) -> bytes:
    payload = ev.MemberRegistered(member_id=member_id, store_id="s1")
    return make_event("test", member_id, payload, datetime.now(UTC)).SerializeToString()


def event_id(raw: bytes) -> str:
    return event_pb2.Event.FromString(raw).id


async def poll_until(
    consumers: list[EventConsumer], done: Callable[[], Awaitable[bool] | bool],
) -> None:
    """Polls the consumers (short blocking reads) until `done()` holds or time runs out."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        result = done()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        for consumer in consumers:
            await consumer.poll(block_ms=20)


async def pending_count(redis: aioredis.Redis, group: str, stream: str = STREAM) -> int:
    return (await redis.xpending(stream, group))["pending"]


def consumer(redis: aioredis.Redis, group: str, name: str, handler, **kw) -> EventConsumer:
    kw.setdefault("block_ms", 20)
    return EventConsumer(redis, STREAM, group, name, handler, **kw)


async def test_a_group_handles_every_event_once_and_acks(redis: aioredis.Redis) -> None:
    raws = [envelope(f"m{i}") for i in range(5)]
    seen: list[str] = []

    async def handler(event: event_pb2.Event) -> None:
        assert event.type == "pond.events.v1.MemberRegistered"
        seen.append(event.id)

    c = consumer(redis, "g", "c1", handler)
    await c.ensure_group()
    await publish(redis, STREAM, raws)

    await poll_until([c], lambda: len(seen) >= 5)
    assert seen == [event_id(r) for r in raws]
    assert await pending_count(redis, "g") == 0
    assert c.stats.handled == 5 and c.stats.failed == 0

    # Nothing is delivered twice: another round finds no work.
    assert await c.poll(block_ms=20) == 0
    assert len(seen) == 5


async def test_run_loop_delivers_events_published_while_running(redis: aioredis.Redis) -> None:
    got: list[str] = []
    arrived = asyncio.Event()

    async def handler(event: event_pb2.Event) -> None:
        got.append(event.subject_id)
        if len(got) == 3:
            arrived.set()

    c = consumer(redis, "g", "c1", handler)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    try:
        await publish(redis, STREAM, [envelope(f"m{i}") for i in range(3)])
        await asyncio.wait_for(arrived.wait(), WAIT_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_SECONDS)
    assert got == ["m0", "m1", "m2"]
    assert await pending_count(redis, "g") == 0


async def test_consumer_killed_after_effect_before_ack_is_redelivered_once(
    redis: aioredis.Redis,
) -> None:
    raw = envelope("m1")
    eid = event_id(raw)
    calls: list[str] = []
    crash = True

    async def handler(event: event_pb2.Event) -> None:
        calls.append(event.id)
        await redis.eval(APPLY_ONCE, 2, f"effect:{event.id}", "effect:count")
        if crash:
            raise Crash  # dies after the effect, before the ack

    first = consumer(redis, "g", "c1", handler)  # default claim_idle_ms: never reclaims here
    await first.ensure_group()
    await publish(redis, STREAM, [raw])
    with pytest.raises(Crash):
        await poll_until([first], lambda: False)

    # The effect happened, the message is still pending for the dead consumer.
    assert int(await redis.get("effect:count")) == 1
    pending = await redis.xpending_range(STREAM, "g", min="-", max="+", count=10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(b"c1", 1)]
    assert not await redis.exists(f"pond:consumed:g:{eid}")

    crash = False
    second = consumer(redis, "g", "c2", handler, claim_idle_ms=50)
    await poll_until([second], lambda: second.stats.handled == 1)

    assert calls == [eid, eid]  # the handler ran twice...
    assert int(await redis.get("effect:count")) == 1  # ...the effect counted once
    assert await pending_count(redis, "g") == 0
    assert await redis.exists(f"pond:consumed:g:{eid}")


async def test_event_already_finished_by_the_group_is_acked_without_handling(
    redis: aioredis.Redis,
) -> None:
    raw = envelope("m1")
    calls: list[str] = []

    async def handler(event: event_pb2.Event) -> None:
        calls.append(event.id)

    c = consumer(redis, "g", "c1", handler)
    await c.ensure_group()
    await publish(redis, STREAM, [raw, raw])  # e.g. the relay republished after a crash

    await poll_until([c], lambda: c.stats.handled + c.stats.skipped == 2)
    assert calls == [event_id(raw)]
    assert (c.stats.handled, c.stats.skipped) == (1, 1)
    assert await pending_count(redis, "g") == 0

    # Published again later (long after the first copy was acked): still skipped.
    await publish(redis, STREAM, [raw])
    await poll_until([c], lambda: c.stats.skipped == 2)
    assert len(calls) == 1
    assert await pending_count(redis, "g") == 0


async def test_a_failing_event_in_a_round_leaves_only_itself_pending(
    redis: aioredis.Redis,
) -> None:
    """A round's messages are acked together after their effects: one that fails stays
    pending alone, those before and after it in the round are done and acked."""
    raws = [envelope(f"m{i}") for i in range(3)]
    calls: list[str] = []

    async def handler(event: event_pb2.Event) -> None:
        calls.append(event.subject_id)
        if event.subject_id == "m1":
            raise RuntimeError("refused")

    c = consumer(redis, "g", "c1", handler)
    await c.ensure_group()
    await publish(redis, STREAM, raws)

    await poll_until([c], lambda: c.stats.handled + c.stats.failed == 3)
    assert calls == ["m0", "m1", "m2"]
    assert (c.stats.handled, c.stats.failed) == (2, 1)
    pending = await redis.xpending_range(STREAM, "g", min="-", max="+", count=10)
    assert len(pending) == 1
    assert [bool(await redis.exists(f"pond:consumed:g:{event_id(r)}")) for r in raws] == [
        True, False, True,
    ]


async def test_poisoned_event_is_dead_lettered_after_max_deliveries(
    redis: aioredis.Redis,
) -> None:
    raw = envelope("m1")
    calls: list[str] = []

    async def handler(event: event_pb2.Event) -> None:
        calls.append(event.id)
        raise RuntimeError("boom")

    c = consumer(redis, "g", "c1", handler, max_deliveries=2, claim_idle_ms=50)
    await c.ensure_group()
    [msg_id] = await publish(redis, STREAM, [raw])

    async def dead_lettered() -> bool:
        return await redis.xlen(DEAD) > 0

    await poll_until([c], dead_lettered)

    assert calls == [event_id(raw)] * 2  # tried max_deliveries times, then given up
    [(_dead_id, fields)] = await redis.xrange(DEAD)
    assert fields[b"e"] == raw
    assert fields[b"group"] == b"g"
    assert fields[b"source_id"] == msg_id
    assert b"deliveries" in fields[b"error"]
    assert await pending_count(redis, "g") == 0
    assert (c.stats.failed, c.stats.dead_lettered, c.stats.handled) == (2, 1, 0)

    # Given up means given up: no further attempts.
    assert await c.poll(block_ms=20) == 0
    assert len(calls) == 2


async def test_unreadable_envelope_is_dead_lettered_at_once(redis: aioredis.Redis) -> None:
    calls: list[str] = []

    async def handler(event: event_pb2.Event) -> None:
        calls.append(event.id)

    good = envelope("m1")
    c = consumer(redis, "g", "c1", handler, max_deliveries=5)
    await c.ensure_group()
    [bad_id, _good_id] = await publish(redis, STREAM, [b"\xff\xfe not an envelope", good])

    await c.poll(block_ms=20)  # one round, no retries

    [(_dead_id, fields)] = await redis.xrange(DEAD)
    assert fields[b"e"] == b"\xff\xfe not an envelope"
    assert fields[b"error"].startswith(b"unreadable envelope")
    assert fields[b"group"] == b"g"
    assert fields[b"source_id"] == bad_id
    assert calls == [event_id(good)]  # the bad message does not block the good one
    assert await pending_count(redis, "g") == 0
    assert c.stats.dead_lettered == 1


async def test_envelope_without_id_is_dead_lettered(redis: aioredis.Redis) -> None:
    async def handler(event: event_pb2.Event) -> None:
        raise AssertionError("must not be called")

    c = consumer(redis, "g", "c1", handler)
    await c.ensure_group()
    await redis.xadd(STREAM, {b"other": b"x"})  # no envelope field at all

    await c.poll(block_ms=20)
    [(_dead_id, fields)] = await redis.xrange(DEAD)
    assert b"without id" in fields[b"error"]
    assert await pending_count(redis, "g") == 0


async def test_each_group_gets_every_event(redis: aioredis.Redis) -> None:
    raws = [envelope(f"m{i}") for i in range(4)]
    seen: dict[str, list[str]] = {"billing": [], "crm": []}

    def handler_for(group: str):
        async def handler(event: event_pb2.Event) -> None:
            seen[group].append(event.id)
        return handler

    billing = consumer(redis, "billing", "c1", handler_for("billing"))
    crm = consumer(redis, "crm", "c1", handler_for("crm"))
    await billing.ensure_group()
    await crm.ensure_group()
    await publish(redis, STREAM, raws)

    # One group finishing first does not hide the events from the other (done-markers
    # are per group).
    await poll_until([billing], lambda: len(seen["billing"]) >= 4)
    await poll_until([crm], lambda: len(seen["crm"]) >= 4)

    ids = [event_id(r) for r in raws]
    assert seen == {"billing": ids, "crm": ids}
    assert await pending_count(redis, "billing") == 0
    assert await pending_count(redis, "crm") == 0
    assert crm.stats.skipped == 0


class CommitDuringRead:
    """An outbox whose first read races a commit: the commit lands (and notifies the
    relay) just after the relay read an empty outbox."""

    def __init__(self) -> None:
        self.relay: OutboxRelay | None = None
        self.rows: list[tuple[int, bytes]] = []
        self.published: set[int] = set()
        self.reads = 0

    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        self.reads += 1
        pending = [r for r in self.rows if r[0] not in self.published][:limit]
        if self.reads == 1:
            self.rows.append((1, envelope("m1")))
            assert self.relay is not None
            self.relay.notify()
        return pending

    async def outbox_mark_published(self, seqs: list[int]) -> None:
        self.published.update(seqs)


async def test_relay_does_not_lose_a_wakeup_that_arrives_while_it_reads(
    redis: aioredis.Redis,
) -> None:
    store = CommitDuringRead()
    # A long idle poll: only the notify can bring the event out within the wait.
    leases = Leases(ScriptRegistry(redis, "pond:relay-test:", streams=[STREAM]))
    relay = store.relay = OutboxRelay(store, leases, STREAM, poll_seconds=60)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        # The notify during the read must bring the event out long before the poll.
        await eventually(lambda: redis.xlen(STREAM), lambda n: n > 0, timeout=5, interval=0.01)
    finally:
        stop.set()
        relay.notify()
        await asyncio.wait_for(task, WAIT_SECONDS)
    [(_id, fields)] = await redis.xrange(STREAM)
    assert fields[b"e"] == store.rows[0][1]
    assert store.published == {1}


async def test_events_of_types_a_consumer_does_not_want_are_acked_in_bulk(
    redis: aioredis.Redis,
) -> None:
    """Only wanted types reach the handler (and get done-markers); the rest of the
    round is acked at once; an unreadable envelope still goes to the dead letters."""
    registered = [envelope(f"m{i}") for i in range(3)]
    tiers = [make_event("test", f"t{i}", ev.TierChanged(member_id=f"t{i}", to_level=2),
                        datetime.now(UTC)).SerializeToString() for i in range(2)]
    seen: list[str] = []

    async def handler(event: event_pb2.Event) -> None:
        seen.append(event.type)

    c = consumer(redis, "picky", "c1", handler, wanted={"pond.events.v1.TierChanged"})
    await c.ensure_group()
    await publish(redis, STREAM, [*registered[:2], tiers[0], registered[2], tiers[1]])
    await redis.xadd(STREAM, {b"e": b"not an envelope"})
    await poll_until([c], lambda: len(seen) >= 2)
    await poll_until([c], lambda: redis.xlen(DEAD))
    assert seen == ["pond.events.v1.TierChanged"] * 2
    assert await pending_count(redis, "picky") == 0
    assert c.stats.handled == 2 and c.stats.skipped == 3 and c.stats.dead_lettered == 1
    assert not await redis.exists(*(f"pond:consumed:picky:{event_id(r)}" for r in registered))
