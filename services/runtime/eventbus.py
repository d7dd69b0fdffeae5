"""Domain events on Redis Streams: one envelope (pond.events.v1.Event), one stream per
producer, consumer groups, at-least-once delivery (the envelope and the stream entry:
envelopes.py).

Consumers ack after the effect; a message idle past `claim_idle_ms` is reclaimed
(XAUTOCLAIM) and retried; after `max_deliveries` it goes to the stream's dead-letter
stream ("<stream>.dead") with the error (services.runtime.deadletters lists and
replays them). Handlers must be idempotent by event id, since a crash between effect
and ack redelivers the event: services.runtime.events applies each event once per
consumer with a processed mark in the handler's unit of work. A group whose handler
keeps no such marks keeps done keys in Redis instead (`done_keys`): a redelivered
event whose id the group finished is acked without running again.

A round reads what is new (up to `batch`), passes over the entries of types the
handler does not act on by their type field (acked with the rest of the round) and
hands the others to the handler in order; under load the next read waits a few
milliseconds so that a round carries several publishes, since a round costs a read
and an ack whatever it carries.

While a handler runs, the envelope's request id is the log context's (every line
the handler logs carries it, and events it emits carry it on).

Metrics (per stream and group): pond_events_handled_total{outcome=applied|skipped|
unwanted|failed}, pond_events_redelivered_total, pond_events_dead_lettered_total, and
pond_consumer_lag / pond_consumer_pending (XINFO GROUPS, refreshed by `measure()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
import structlog
from pond.events.v1 import event_pb2
from prometheus_client import Counter, Gauge

# The envelope and the stream entry, here for the modules that import them from here.
from services.runtime.envelopes import DEAD_SUFFIX as DEAD_SUFFIX
from services.runtime.envelopes import ENVELOPE_FIELD, TYPE_FIELD
from services.runtime.envelopes import STREAM_MAXLEN as STREAM_MAXLEN
from services.runtime.envelopes import STREAM_PREFIX as STREAM_PREFIX
from services.runtime.envelopes import event_type as event_type
from services.runtime.envelopes import make_event as make_event
from services.runtime.envelopes import publish as publish
from services.runtime.envelopes import stream_for as stream_for
from services.runtime.logs import request_id_var
from services.runtime.redis_health import RedisLink

_DONE_TTL_SECONDS = 7 * 24 * 3600

log = structlog.get_logger("pond.events")

HANDLED = Counter(
    "pond_events_handled", "events delivered to a consumer, by outcome",
    ["stream", "group", "outcome"],
)
REDELIVERED = Counter(
    "pond_events_redelivered", "events delivered again after a failure or a crash",
    ["stream", "group"],
)
DEAD_LETTERED = Counter(
    "pond_events_dead_lettered", "events given up on and moved to the dead-letter stream",
    ["stream", "group"],
)
LAG = Gauge(
    "pond_consumer_lag", "stream entries the group has not read yet", ["stream", "group"]
)
PENDING = Gauge(
    "pond_consumer_pending", "entries read by the group but not acked yet", ["stream", "group"]
)


Handler = Callable[[event_pb2.Event], Awaitable[None]]


@dataclass
class ConsumerStats:
    handled: int = 0
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0


class EventConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        max_deliveries: int = 5,
        claim_idle_ms: int = 30_000,
        block_ms: int = 1000,
        batch: int = 100,
        name: str = "",
        wanted: Collection[str] | None = None,
        done_keys: bool = True,
    ) -> None:
        self.redis, self.stream, self.group, self.consumer = redis, stream, group, consumer
        # The event types the handler acts on (None: all). Others are acked in one
        # XACK per round, without the per-event done-key round trips: a consumer that
        # needs a few types of a busy stream pays for those only.
        self.wanted = wanted
        self._wanted_types = None if wanted is None else frozenset(
            t.encode() for t in wanted)
        # Whether the group remembers the events it finished in Redis (done keys,
        # looked up before its handler runs). Off when the handler keeps processed
        # marks of its own (events.EventHandlers): those skip a redelivered event
        # anyway, and the keys would cost two pipelines of a command per event.
        self.done_keys = done_keys
        # Stale messages are looked for at most every half claim-idle (and every
        # second at most), not on every round: a busy consumer polls hundreds of times
        # a second, and each look is a round trip that finds nothing.
        self._reclaim_every = min(1.0, claim_idle_ms / 2000)
        self._next_reclaim = 0.0
        # How this consumer is named in the Redis-health metrics and logs.
        self.link = RedisLink(name or f"consumer:{group}:{stream}")
        self.handler = handler
        self.max_deliveries, self.claim_idle_ms = max_deliveries, claim_idle_ms
        self.block_ms, self.batch = block_ms, batch
        # After a round that found work but not a full batch, the next read waits this
        # long, so that under load a round carries the events of several publishes
        # (each round costs its read and ack whatever it carries); an event arriving
        # on an idle stream is still read at once.
        self.coalesce_seconds = 0.01
        self.stats = ConsumerStats()
        self._last_error: dict[bytes, str] = {}  # last handler error per pending message

    def _done_key(self, event_id: str) -> str:
        return f"pond:consumed:{self.group}:{event_id}"

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def poll(self, block_ms: int | None = None) -> int:
        """One round: reclaim stale messages, then read new ones. Returns how many
        messages were handled or skipped."""
        done = 0
        if time.monotonic() >= self._next_reclaim:
            done = await self._reclaim()
            if done < self.batch:  # a full batch: more may be stale, look again next round
                self._next_reclaim = time.monotonic() + self._reclaim_every
        reply = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch,
            block=self.block_ms if block_ms is None else block_ms,
        )
        # redis-py types replies loosely: [(stream, [(id, {field: value})])].
        streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply or [])
        unwanted: list[bytes] = []
        wanted: list[tuple[bytes, dict[bytes, bytes]]] = []
        for _stream, messages in streams:
            for msg_id, fields in messages:
                if self._unwanted(fields):
                    unwanted.append(msg_id)
                else:
                    wanted.append((msg_id, fields))
        if wanted:  # the unwanted are acked with the wanted, in the same step
            done += await self._deliver_all(wanted, unwanted)
        elif unwanted:
            await self.redis.xack(self.stream, self.group, *unwanted)
        if unwanted:
            self.stats.skipped += len(unwanted)
            HANDLED.labels(self.stream, self.group, "unwanted").inc(len(unwanted))
        return done + len(unwanted)

    def _unwanted(self, fields: dict[bytes, bytes]) -> bool:
        """An entry of a type the handler does not act on, known from its type field
        or, in an entry without one, from its envelope (an unreadable envelope goes
        the usual way, to the dead letters)."""
        if self._wanted_types is None:
            return False
        type_ = fields.get(TYPE_FIELD)
        if type_ is not None:
            return type_ not in self._wanted_types
        event = event_pb2.Event()
        try:
            event.ParseFromString(fields.get(ENVELOPE_FIELD, b""))
        except Exception:
            return False
        return bool(event.id) and event.type.encode() not in self._wanted_types

    async def run(self, stop: asyncio.Event) -> None:
        """Polls until `stop`; never ends over a Redis outage or a bad round: each
        failure is reported on the Redis link (metrics, error log) and retried with
        backoff, and the group is (re)created whenever Redis does not have it."""
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                done = await self.poll()
                self.link.ok()
                if 0 < done < self.batch and self.coalesce_seconds > 0:
                    await asyncio.sleep(self.coalesce_seconds)
            except aioredis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    group_ready = False  # Redis lost the group (restart without AOF)
                    continue
                log.exception("event consumer round failed; will retry", stream=self.stream)
                await self._pause(stop, self.link.backoff.next())
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                await self._pause(stop, self.link.failed(exc))
            except Exception:
                log.exception("event consumer round failed; will retry", stream=self.stream)
                await self._pause(stop, self.link.backoff.next())

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _reclaim(self) -> int:
        _next, messages, *_ = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
        )
        if not messages:
            return 0
        REDELIVERED.labels(self.stream, self.group).inc(len(messages))
        pending = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=messages[0][0],
            max=messages[-1][0],
            count=len(messages) * 2,
            consumername=self.consumer,
        )
        deliveries = cast(
            dict[bytes, int], {p["message_id"]: p["times_delivered"] for p in pending}
        )
        done = 0
        for msg_id, fields in messages:
            if fields is None:  # trimmed away while pending
                await self.redis.xack(self.stream, self.group, msg_id)
                continue
            if deliveries.get(msg_id, 0) > self.max_deliveries:
                last = self._last_error.pop(msg_id, "")
                await self._dead_letter(msg_id, fields, f"too many deliveries; last error: {last}")
                continue
            done += await self._deliver(msg_id, fields)
        return done

    async def _deliver(self, msg_id: bytes, fields: dict[bytes, bytes]) -> int:
        return await self._deliver_all([(msg_id, fields)])

    async def _deliver_all(
        self, messages: list[tuple[bytes, dict[bytes, bytes]]], unwanted: Sequence[bytes] = (),
    ) -> int:
        """Handles a round's messages in order with two round trips for the round, not
        two per message: one look at their done keys first (EXISTS, pipelined), one
        pipeline at the end setting the done keys of those handled and acking them
        with those found done and the round's `unwanted` (without done keys: the ack
        alone). Acks still follow the effects; an id seen twice in the round (a
        relay's republish) is handled once."""
        events: list[tuple[bytes, event_pb2.Event]] = []
        for msg_id, fields in messages:
            event = event_pb2.Event()
            try:
                event.ParseFromString(fields.get(ENVELOPE_FIELD, b""))
                if not event.id:
                    raise ValueError("event without id")
            except Exception as exc:
                await self._dead_letter(msg_id, fields, f"unreadable envelope: {exc}")
                continue
            events.append((msg_id, event))
        if not events:
            await self._acknowledge([], [], unwanted)
            return 0
        # EXISTS rather than MGET: the services' ACL users allow EXISTS.
        keys = [self._done_key(event.id) for _msg_id, event in events]
        if not self.done_keys:
            found = [0] * len(keys)
        elif len(keys) == 1:  # a pipeline costs more than one command
            found = [await self.redis.exists(keys[0])]
        else:
            check = self.redis.pipeline(transaction=False)
            for key in keys:
                check.exists(key)
            found = await check.execute()
        seen: set[str] = set()
        skipped: list[bytes] = []
        applied: list[tuple[bytes, str]] = []
        try:
            for (msg_id, event), was_done in zip(events, found, strict=True):
                if was_done or event.id in seen:
                    skipped.append(msg_id)
                    continue
                bound = request_id_var.set(event.request_id)
                try:
                    await self.handler(event)
                except Exception as exc:
                    # Left pending: reclaimed after claim_idle_ms, dead-lettered after N tries.
                    self._last_error[msg_id] = repr(exc)[:500]
                    self.stats.failed += 1
                    HANDLED.labels(self.stream, self.group, "failed").inc()
                    log.warning(
                        "event handler failed",
                        event_type=event.type,
                        event_id=event.id,
                        error=repr(exc),
                    )
                    continue
                finally:
                    request_id_var.reset(bound)
                seen.add(event.id)
                applied.append((msg_id, event.id))
        finally:
            await self._acknowledge(applied, skipped, unwanted)
        return len(applied) + len(skipped)

    async def _acknowledge(
        self,
        applied: list[tuple[bytes, str]],
        skipped: list[bytes],
        unwanted: Sequence[bytes] = (),
    ) -> None:
        """Marks the applied events done and acks them with the skipped (and the
        round's unwanted), in one step."""
        acked = [*unwanted, *skipped, *(msg_id for msg_id, _ in applied)]
        if not acked:
            return
        if self.done_keys and applied:
            pipe = self.redis.pipeline(transaction=True)
            for _msg_id, event_id in applied:
                pipe.set(self._done_key(event_id), b"1", ex=_DONE_TTL_SECONDS)
            pipe.xack(self.stream, self.group, *acked)
            await pipe.execute()
        else:
            await self.redis.xack(self.stream, self.group, *acked)
        for msg_id, _event_id in applied:
            self._last_error.pop(msg_id, None)
        self.stats.handled += len(applied)
        self.stats.skipped += len(skipped)
        if applied:
            HANDLED.labels(self.stream, self.group, "applied").inc(len(applied))
        if skipped:
            HANDLED.labels(self.stream, self.group, "skipped").inc(len(skipped))

    async def _dead_letter(self, msg_id: bytes, fields: dict[bytes, bytes], why: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(
            self.stream + DEAD_SUFFIX,
            {
                ENVELOPE_FIELD: fields.get(ENVELOPE_FIELD, b""),
                b"error": why.encode(),
                b"group": self.group.encode(),
                b"source_id": msg_id,
            },
        )
        pipe.xack(self.stream, self.group, msg_id)
        await pipe.execute()
        self.stats.dead_lettered += 1
        DEAD_LETTERED.labels(self.stream, self.group).inc()
        log.error("event dead-lettered", stream=self.stream, message_id=msg_id.decode(), why=why)

    async def measure(self) -> None:
        """Updates the lag and pending gauges from XINFO GROUPS (lag needs Redis 7)."""
        for info in await self.redis.xinfo_groups(self.stream):
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) != self.group:
                continue
            PENDING.labels(self.stream, self.group).set(int(info.get("pending") or 0))
            lag = info.get("lag")
            if lag is not None:
                LAG.labels(self.stream, self.group).set(int(lag))
