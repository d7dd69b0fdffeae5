"""One consumer group per service and stream, seen through a service built on the
host (services/_example with extra consumers declared beside its own): the
consumers a service declares on one stream read it in one group, each handler gets
the types it registered and each event once, entries name their type so a group
passes over the ones it does not want without reading the envelope, entries without
the type (added before it existed) still work, and a handler that fails does not
keep another from an event. Real gRPC server, SQLite and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
import pytest_asyncio
import redis.asyncio as aioredis
from pond.events.v1 import member_events_pb2 as mev
from pond.example.v1 import notes_pb2 as pb
from pond.example.v1 import notes_pb2_grpc
from prometheus_client import REGISTRY

from services._example.events import STREAM
from services._example.server import SPEC, build
from services._example.settings import ExampleSettings
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.clock import ManualClock
from services.runtime.documents import UnitOfWork
from services.runtime.eventbus import DEAD_SUFFIX, make_event, publish
from services.runtime.events import EventHandlers, Received
from services.runtime.host import (
    Consumer,
    HostContext,
    HostOptions,
    Service,
    ServiceHost,
    ServiceSpec,
    start_service,
)
from services.runtime.redis_health import Backoff
from tests.conftest import TEST_SECRET, eventually, token

FAST = HostOptions(health_seconds=0.05, metrics_seconds=0.05, timer_poll_seconds=0.05,
                   job_poll_seconds=0.05, restart_backoff=lambda: Backoff(0.05, 0.2))


class Applied:
    """What each extra handler applied: (handler, event type, subject) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.failures_left: dict[str, int] = {}  # handler -> deliveries to fail

    def handler(self, name: str) -> Callable:
        async def apply(event: Received, _uow: UnitOfWork) -> None:
            if self.failures_left.get(name, 0) > 0:
                self.failures_left[name] -= 1
                raise RuntimeError(f"{name} is down")
            self.seen.append((name, event.envelope.type, event.subject_id))
        return apply

    def of(self, name: str) -> list[tuple[str, str]]:
        return [(t, s) for n, t, s in self.seen if n == name]


@pytest_asyncio.fixture
async def service(tmp_path, redis_url: str, redis) -> AsyncIterator[tuple[ServiceHost, Applied]]:
    """The example service with two more concerns on its own stream: "registrations"
    (MemberRegistered, TierChanged) and "tiers" (TierChanged to a level above 1),
    marks of their own."""
    applied = Applied()

    async def build_more(ctx: HostContext) -> Service:
        service = await build(ctx)
        assert service.store is not None
        registrations = EventHandlers("registrations", service.store, ctx.clock).on(
            mev.MemberRegistered, applied.handler("registrations")).on(
            mev.TierChanged, applied.handler("registrations"))
        tiers = EventHandlers("tiers", service.store, ctx.clock).on(
            mev.TierChanged, applied.handler("tiers"), when=lambda changed: changed.to_level > 1)
        service.consumers = [*service.consumers, Consumer(STREAM, registrations),
                             Consumer(STREAM, tiers)]
        return service

    spec = ServiceSpec("example", ExampleSettings, build_more, SPEC.port, SPEC.metrics_port)
    settings = ExampleSettings(
        data_dir=tmp_path, auth_secret=TEST_SECRET, redis_url=redis_url, mode="test",
        outbox_poll_seconds=0.05, event_claim_idle_ms=50, event_max_deliveries=5,
        event_block_ms=50)
    host = await start_service(spec, settings, clock=ManualClock(datetime(2026, 3, 1, tzinfo=UTC)),
                               port=0, metrics=False, options=FAST)
    try:
        yield host, applied
    finally:
        await host.stop(0)


def registered(member_id: str) -> bytes:
    return make_event("member", member_id, mev.MemberRegistered(member_id=member_id),
                      datetime.now(UTC)).SerializeToString()


def tier_changed(member_id: str, to_level: int = 2) -> bytes:
    return make_event("member", member_id, mev.TierChanged(member_id=member_id,
                                                          to_level=to_level),
                      datetime.now(UTC)).SerializeToString()


async def pending(redis: aioredis.Redis) -> int:
    return (await redis.xpending(STREAM, "example"))["pending"]


async def test_consumers_declared_on_one_stream_share_one_group_each_getting_its_types_once(
    service: tuple[ServiceHost, Applied], redis: aioredis.Redis
):
    host, applied = service
    await publish(redis, STREAM, [registered("m1"), tier_changed("m2"), registered("m3")])
    # The service's own concern still works through its relay, in the same group.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = notes_pb2_grpc.NotesServiceStub(channel)
        md = call_metadata(token(Role.OPERATOR))
        await stub.AddNote(pb.AddNoteRequest(note_id="n1", text="hi"), metadata=md)
        await eventually(lambda: stub.GetNote(pb.GetNoteRequest(note_id="n1"), metadata=md),
                         lambda n: n.seen == 1)
    # The note's event came after the others: all were read; none is left pending.
    await eventually(lambda: pending(redis), lambda n: n == 0)

    [group] = await redis.xinfo_groups(STREAM)
    assert group["name"] == b"example" and group["pending"] == 0
    reg, tier = "pond.events.v1.MemberRegistered", "pond.events.v1.TierChanged"
    assert applied.of("registrations") == [(reg, "m1"), (tier, "m2"), (reg, "m3")]
    assert applied.of("tiers") == [(tier, "m2")]

    # The relay's entries name their type beside the envelope.
    *_, (_id, fields) = await redis.xrange(STREAM)
    assert fields[b"t"] == b"pond.example.v1.NoteAdded"

    # Published again (a relay's crash between publish and mark): each handler's
    # marks keep it applied once.
    [again] = await publish(redis, STREAM, [(await redis.xrange(STREAM))[1][1][b"e"]])
    await eventually(lambda: redis.xinfo_groups(STREAM),
                     lambda groups: groups[0]["last-delivered-id"] == again
                     and groups[0]["pending"] == 0)
    assert applied.of("tiers") == [(tier, "m2")]
    assert len(applied.of("registrations")) == 3


async def test_an_entry_of_a_type_nobody_wants_is_acked_without_reading_it(
    service: tuple[ServiceHost, Applied], redis: aioredis.Redis
):
    """Its type field is enough: the envelope is not read (here it could not be),
    no handler runs, nothing is dead-lettered."""
    host, applied = service
    await redis.xadd(STREAM, {b"e": b"\xff not an envelope", b"t": b"pond.events.v1.OrderPaid"})
    await publish(redis, STREAM, [registered("m1")])
    await eventually(lambda: asyncio_len(applied.seen), lambda n: n == 1)
    await eventually(lambda: pending(redis), lambda n: n == 0)
    assert applied.seen == [("registrations", "pond.events.v1.MemberRegistered", "m1")]
    assert await redis.xlen(STREAM + DEAD_SUFFIX) == 0
    [consumer] = host.consumers
    assert consumer.stats.skipped >= 1 and consumer.stats.dead_lettered == 0


async def test_entries_without_the_type_field_are_still_dispatched_by_their_envelope(
    service: tuple[ServiceHost, Applied], redis: aioredis.Redis
):
    """Entries added before the type field existed: the envelope says the type."""
    _host, applied = service
    for raw in (registered("old1"), tier_changed("old2"),
                make_event("member", "old3", mev.OrderPaid(member_id="old3"),
                           datetime.now(UTC)).SerializeToString()):
        await redis.xadd(STREAM, {b"e": raw})
    await eventually(lambda: asyncio_len(applied.seen), lambda n: n == 3)
    await eventually(lambda: pending(redis), lambda n: n == 0)
    reg, tier = "pond.events.v1.MemberRegistered", "pond.events.v1.TierChanged"
    assert sorted(applied.seen) == [("registrations", reg, "old1"), ("registrations", tier, "old2"),
                                    ("tiers", tier, "old2")]
    assert await redis.xlen(STREAM + DEAD_SUFFIX) == 0


async def test_a_failing_handler_does_not_keep_the_others_from_an_event(
    service: tuple[ServiceHost, Applied], redis: aioredis.Redis
):
    """"registrations" fails its first two deliveries (a MemberRegistered, then a
    TierChanged): "tiers" applies the TierChanged at once all the same; both messages
    stay pending and come again until "registrations" has applied them, and "tiers"
    does not apply its event a second time."""
    _host, applied = service
    applied.failures_left["registrations"] = 2
    await publish(redis, STREAM, [registered("r1"), tier_changed("m1")])
    await eventually(lambda: asyncio_len(applied.of("tiers")), lambda n: n == 1)
    await eventually(lambda: asyncio_len(applied.of("registrations")), lambda n: n == 2)
    await eventually(lambda: pending(redis), lambda n: n == 0)
    reg, tier = "pond.events.v1.MemberRegistered", "pond.events.v1.TierChanged"
    assert applied.of("tiers") == [(tier, "m1")]
    assert sorted(applied.of("registrations")) == [(reg, "r1"), (tier, "m1")]
    assert applied.failures_left["registrations"] == 0
    assert await redis.xlen(STREAM + DEAD_SUFFIX) == 0


async def test_events_a_handler_turns_down_by_its_when_are_not_applied_or_marked(
    service: tuple[ServiceHost, Applied], redis: aioredis.Redis
):
    """"tiers" wants TierChanged above level 1 only: the one to level 1 is passed over
    (counted as ignored, no mark), "registrations" applies both."""
    _host, applied = service
    ignored = sample("pond_event_handler_outcomes_total", consumer="tiers", outcome="ignored")
    await publish(redis, STREAM, [tier_changed("low", to_level=1), tier_changed("high")])
    await eventually(lambda: asyncio_len(applied.of("registrations")), lambda n: n == 2)
    await eventually(lambda: pending(redis), lambda n: n == 0)
    assert applied.of("tiers") == [("pond.events.v1.TierChanged", "high")]
    assert sample("pond_event_handler_outcomes_total", consumer="tiers",
                  outcome="ignored") == ignored + 1


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def asyncio_len(items: list) -> int:
    return len(items)
