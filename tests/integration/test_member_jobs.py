"""The member service's maintenance runs by itself, as scheduled jobs of its host, on
the clock in the brand's time zone: birthday gifts after 00:30, paid memberships
lapsed hourly, points expired nightly at 03:00. No cron, no RPC call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest_asyncio
from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as ev
from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc

from services.member.server import start_member_service
from services.runtime.clock import ManualClock
from tests.conftest import MemberHarness, eventually, member_settings


@pytest_asyncio.fixture
async def member_with_jobs(tmp_path, redis_url: str, redis) -> AsyncIterator[MemberHarness]:
    clock = ManualClock(datetime(2026, 3, 1, 2, 0, tzinfo=UTC))  # 10:00 in Shanghai
    service = await start_member_service(
        member_settings(tmp_path, redis_url, jobs_enabled=True), clock=clock, port=0,
        metrics=False,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield MemberHarness(service, channel, member_pb2_grpc.MemberServiceStub(channel), clock)
    finally:
        await channel.close()
        await service.stop(0)


def phone(value: str) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=value)


async def entries(h: MemberHarness, member_id: str) -> list[pb.PointsEntry]:
    reply = await h.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(member_id=member_id, page_size=50), metadata=h.md())
    return list(reply.entries)


async def kinds_updated(redis, member_id: str) -> list[list[str]]:
    out = []
    for _id, fields in await redis.xrange("pond.events.member"):
        event = event_pb2.Event.FromString(fields[b"e"])
        if event.type == "pond.events.v1.MemberUpdated" and event.subject_id == member_id:
            payload = ev.MemberUpdated()
            event.payload.Unpack(payload)
            out.append(list(payload.changed_fields))
    return out


async def test_maintenance_runs_on_the_clock_without_being_called(
    member_with_jobs: MemberHarness, redis
):
    h = member_with_jobs
    buyer = (await h.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone("13800000011")], profile=pb.Profile(birthday="1990-03-02")),
        metadata=h.md())).member
    await h.stub.RecordOrder(pb.RecordOrderRequest(
        order_id="o-1", member_id=buyer.id, channel=4, amount_fen=100_000,
        items=[pb.OrderItem(sku="s", category="c", quantity=1, unit_price_fen=100_000)]),
        metadata=h.md())  # 1,000 points, and Silver: a birthday gift of 100
    subscriber = (await h.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone("13800000012")]), metadata=h.md())).member
    paid = pb.SetPaidMembershipRequest(member_id=subscriber.id, idempotency_key="sub-1")
    paid.paid_until.FromDatetime(h.clock.now() + timedelta(days=30))
    await h.stub.SetPaidMembership(paid, metadata=h.md())

    # 00:40 on the buyer's birthday: the 00:30 job has given the gift.
    h.clock.set(datetime(2026, 3, 1, 16, 40, tzinfo=UTC))
    h.service.host.wake_timers_and_jobs()
    got = await eventually(lambda: entries(h, buyer.id),
                           lambda es: any(e.kind == pb.POINTS_ENTRY_KIND_GIFT for e in es))
    assert [e.delta for e in got if e.kind == pb.POINTS_ENTRY_KIND_GIFT] == [100]

    # A year and two days on, after 03:00: the points (the order's and the gift's)
    # have expired and the paid membership has been stored as lapsed (announced).
    h.clock.set(datetime(2027, 3, 2, 19, 30, tzinfo=UTC))
    h.service.host.wake_timers_and_jobs()
    got = await eventually(lambda: entries(h, buyer.id),
                           lambda es: any(e.kind == pb.POINTS_ENTRY_KIND_EXPIRE for e in es))
    assert [e.delta for e in got if e.kind == pb.POINTS_ENTRY_KIND_EXPIRE] == [-1100]
    await eventually(lambda: kinds_updated(redis, subscriber.id),
                     lambda changes: ["kind"] in changes)
    member = await h.stub.GetMember(pb.GetMemberRequest(member_id=buyer.id), metadata=h.md())
    assert member.points_balance == 0
