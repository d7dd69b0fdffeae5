"""A real community service for the tests (grpc.aio on port 0, SQLite, the outbox
relay to a real Redis), calling a real member service for entry rules, with helpers
to call it and read what it published."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc
from pond.events.v1 import community_events_pb2 as cev
from pond.events.v1 import event_pb2
from pond.member.v1 import member_pb2 as mpb
from pond.tagging.v1 import tagging_pb2_grpc

from services.community.events import STREAM
from services.community.server import CommunityService, start_community_service
from services.community.settings import CommunitySettings
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.clock import ManualClock
from services.runtime.errors import error_details
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, MemberHarness, token

FLASH, INTEREST, VIP = (pb.GROUP_KIND_PROMOTION_FLASH, pb.GROUP_KIND_INTEREST,
                        pb.GROUP_KIND_VIP)
PAYLOADS = {cls.DESCRIPTOR.full_name: cls for cls in (
    cev.MemberJoinedGroup, cev.MemberLeftGroup, cev.GroupOpened,
    cev.GroupArchived, cev.CheckedIn, cev.ChainJoined, cev.ChainEntryChanged, cev.ChainClosed,
    cev.ColumnPostDue)}


@dataclass
class Community:
    service: CommunityService
    channel: grpc.aio.Channel
    stub: community_pb2_grpc.CommunityServiceStub
    clock: ManualClock
    member: MemberHarness

    @staticmethod
    def md(role: Role = Role.OPERATOR, member_id: str = "") -> tuple:
        return call_metadata(token(role), member_id=member_id)

    def ts(self, **delta: float) -> timestamp_pb2.Timestamp:
        """Now (the service's clock) plus `delta`, as a Timestamp."""
        from datetime import timedelta

        t = timestamp_pb2.Timestamp()
        t.FromDatetime(self.clock.now() + timedelta(**delta))
        return t

    async def group(self, group_id: str = "", **fields) -> pb.Group:
        fields.setdefault("name", "Fruit lovers")
        fields.setdefault("kind", INTEREST)
        return await self.stub.CreateGroup(
            pb.CreateGroupRequest(group_id=group_id, group=pb.Group(**fields)), metadata=self.md())

    async def join(self, group_id: str, member_id: str, **kw) -> pb.JoinGroupResponse:
        return await self.stub.JoinGroup(
            pb.JoinGroupRequest(group_id=group_id, member_id=member_id, **kw), metadata=self.md())

    async def rule(self, rule_id: str, **fields) -> pb.RoutingRule:
        fields.setdefault("name", rule_id)
        return await self.stub.CreateRoutingRule(
            pb.CreateRoutingRuleRequest(rule_id=rule_id, rule=pb.RoutingRule(**fields)),
            metadata=self.md())

    async def route(self, member_id: str, rule_id: str = "", **kw) -> pb.RouteMemberResponse:
        return await self.stub.RouteMember(
            pb.RouteMemberRequest(member_id=member_id, rule_id=rule_id, **kw), metadata=self.md())

    async def register(self, phone: str, store_id: str = "") -> str:
        resp = await self.member.stub.RegisterMember(
            mpb.RegisterMemberRequest(identities=[mpb.Identity(
                kind=mpb.IDENTITY_KIND_PHONE, value=phone)], store_id=store_id),
            metadata=self.member.md())
        return resp.member.id

    async def buy(self, member_id: str, order_id: str, fen: int = 5_000) -> None:
        await self.member.stub.RecordOrder(mpb.RecordOrderRequest(
            order_id=order_id, member_id=member_id, channel=4, amount_fen=fen,
            items=[mpb.OrderItem(sku="cherry", category="fruit", quantity=1,
                                 unit_price_fen=fen)]), metadata=self.member.md())

    def wake(self) -> None:
        self.service.host.wake_timers_and_jobs()


async def published(redis) -> list[tuple[str, object]]:
    """(type name, payload) of every event on the community stream, in order."""
    out = []
    for _id, fields in await redis.xrange(STREAM):
        env = event_pb2.Event.FromString(fields[b"e"])
        cls = PAYLOADS[env.type]
        payload = cls()
        env.payload.Unpack(payload)
        out.append((cls.__name__, payload))
    return out


async def fails(call, code: grpc.StatusCode, reason: str = "") -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    got, violations = error_details(info.value)
    if reason:
        assert got == reason, (got, info.value.details())
    return violations


def community_settings(tmp_path, redis_url: str, member_target: str, **kw) -> CommunitySettings:
    env = dict(data_dir=tmp_path / "community", auth_secret=TEST_SECRET, redis_url=redis_url,
               mode="test", outbox_poll_seconds=0.05, jobs_enabled=False, event_block_ms=100,
               community_member_target=member_target,
               community_tagging_target="127.0.0.1:9")  # no tagging unless a test starts one
    env.update(kw)
    return CommunitySettings(**env)


@pytest_asyncio.fixture(name="community")
async def community_fixture(member: MemberHarness, redis_url: str, redis,
                    tmp_path) -> AsyncIterator[Community]:
    clock = member.clock
    clock.set(datetime.fromisoformat("2026-03-01T02:00:00+00:00"))
    service = await start_community_service(
        community_settings(tmp_path, redis_url, member.target), clock=clock, port=0,
        metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    harness = Community(service, channel, community_pb2_grpc.CommunityServiceStub(channel),
                        clock, member)
    try:
        yield harness
    finally:  # the harness's service: a test may have restarted it
        await harness.channel.close()
        await harness.service.stop(0)


Pair = tuple[Community, tagging_pb2_grpc.TaggingServiceStub]


@pytest_asyncio.fixture(name="with_tagging")
async def with_tagging_fixture(
    member: MemberHarness, redis_url: str, redis, tmp_path
) -> AsyncIterator[Pair]:
    """A community service that asks a real tagging service (segments, tags)."""
    tagging = await start_tagging_service(TaggingSettings(
        jobs_enabled=False, data_dir=tmp_path / "tagging", auth_secret=TEST_SECRET,
        redis_url=redis_url, mode="test", outbox_poll_seconds=0.05, tagging_flush_seconds=0.2,
        tagging_rescore_delay_seconds=0), clock=member.clock, port=0, metrics=False)
    service = await start_community_service(community_settings(
        tmp_path, redis_url, member.target,
        community_tagging_target=f"127.0.0.1:{tagging.port}"), clock=member.clock, port=0,
        metrics=False)
    tch = grpc.aio.insecure_channel(f"127.0.0.1:{tagging.port}")
    cch = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield (Community(service, cch, community_pb2_grpc.CommunityServiceStub(cch),
                         member.clock, member), tagging_pb2_grpc.TaggingServiceStub(tch))
    finally:
        await cch.close()
        await tch.close()
        await service.stop(0)
        await tagging.stop(0)
