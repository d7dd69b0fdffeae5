"""Who may use Redis. The embedded Valkey wants its password, so an event forged by
anyone else on the host is refused; credentials in REDIS_URL work; and the
per-service ACL lines the README documents (run here as written) let each service
add events only to its own stream while its relay and consumer do all they need."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pond.community.v1 import community_pb2 as cpb
from pond.community.v1 import community_pb2_grpc
from pond.member.v1 import member_pb2 as mpb
from pond.member.v1 import member_pb2_grpc
from pond.tagging.v1 import tagging_pb2 as pb
from pond.tagging.v1 import tagging_pb2_grpc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError

from services.community.server import start_community_service
from services.member.server import start_member_service
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.redis_conn import EmbeddedValkey, connect_redis
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, eventually, member_settings, token
from tests.integration.community_harness import community_settings

README = Path(__file__).resolve().parents[2] / "README.md"
MEMBER_STREAM, TAGGING_STREAM = "pond.events.member", "pond.events.tagging"
COMMUNITY_STREAM = "pond.events.community"


def documented_acl_lines() -> list[str]:
    lines = [
        line.strip()
        for line in README.read_text().splitlines()
        if line.strip().startswith("ACL SETUSER pond-")
    ]
    users = sorted(line.split()[2] for line in lines)
    assert users == ["pond-community", "pond-member", "pond-tagging"], \
        "the README documents one ACL user per service"
    return lines


def user_url(redis_url: str, user: str, password: str) -> str:
    parts = urlsplit(redis_url)
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest_asyncio.fixture
async def service_users(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[dict[str, str]]:
    """The README's ACL users on the test server: name -> REDIS_URL for that user."""
    passwords = {name: secrets.token_hex(8)
                 for name in ("MEMBER_PASSWORD", "TAGGING_PASSWORD", "COMMUNITY_PASSWORD")}
    for line in documented_acl_lines():
        for placeholder, password in passwords.items():
            line = line.replace(placeholder, password)
        assert await redis.execute_command(*shlex.split(line)) in (b"OK", "OK", True)
    try:
        yield {
            "member": user_url(redis_url, "pond-member", passwords["MEMBER_PASSWORD"]),
            "tagging": user_url(redis_url, "pond-tagging", passwords["TAGGING_PASSWORD"]),
            "community": user_url(redis_url, "pond-community", passwords["COMMUNITY_PASSWORD"]),
        }
    finally:
        await redis.execute_command("ACL", "DELUSER", "pond-member", "pond-tagging",
                                    "pond-community")


async def test_embedded_valkey_refuses_clients_without_its_password(tmp_path: Path):
    valkey = EmbeddedValkey(tmp_path / "valkey").start()
    # No retries: redis-py would otherwise back off for seconds before giving up.
    once = {"host": "127.0.0.1", "port": valkey.port, "retry": Retry(NoBackoff(), 0)}
    anonymous, wrong = aioredis.Redis(**once), aioredis.Redis(password="guess", **once)
    owner = connect_redis(valkey.url)
    try:
        for client in (anonymous, wrong):
            with pytest.raises(aioredis.AuthenticationError):
                await client.xadd(MEMBER_STREAM, {b"e": b"forged OrderPaid"})
        assert await owner.xlen(MEMBER_STREAM) == 0
        assert await owner.xadd(MEMBER_STREAM, {b"e": b"x"})
    finally:
        for client in (anonymous, wrong, owner):
            await client.aclose()
        valkey.stop()


async def test_each_service_user_adds_events_only_to_its_own_stream(
    redis: aioredis.Redis, service_users: dict[str, str]
):
    member = connect_redis(service_users["member"])
    tagging = connect_redis(service_users["tagging"])
    community = connect_redis(service_users["community"])
    try:
        assert await member.xadd(MEMBER_STREAM, {b"e": b"x"})
        assert await tagging.xadd(TAGGING_STREAM, {b"e": b"x"})
        assert await community.xadd(COMMUNITY_STREAM, {b"e": b"x"})
        for client, other in ((member, TAGGING_STREAM), (tagging, MEMBER_STREAM),
                              (community, MEMBER_STREAM), (tagging, COMMUNITY_STREAM),
                              (member, COMMUNITY_STREAM)):
            with pytest.raises(NoPermissionError):
                await client.xadd(other, {b"e": b"forged"})
        with pytest.raises(NoPermissionError):
            await member.xrange(MEMBER_STREAM)  # a producer reads nothing
        assert await redis.xlen(MEMBER_STREAM) == 1 and await redis.xlen(TAGGING_STREAM) == 1
    finally:
        await member.aclose()
        await tagging.aclose()
        await community.aclose()


async def test_both_services_run_on_their_acl_users(
    tmp_path: Path, redis: aioredis.Redis, service_users: dict[str, str]
):
    """Member relay -> tagging consumer -> tagging relay, and the dead-letter path, all
    under the documented users."""
    member = await start_member_service(
        member_settings(tmp_path / "member", service_users["member"]), port=0, metrics=False
    )
    tagging = await start_tagging_service(
        TaggingSettings(
            data_dir=tmp_path / "tagging", auth_secret=TEST_SECRET, mode="test",
            redis_url=service_users["tagging"], outbox_poll_seconds=0.05,
            tagging_rescore_delay_seconds=0,
        ),
        port=0, metrics=False,
    )
    community = await start_community_service(community_settings(
        tmp_path, service_users["community"], f"127.0.0.1:{member.port}",
        community_tagging_target=f"127.0.0.1:{tagging.port}"), port=0, metrics=False)
    md = call_metadata(token(Role.OPERATOR))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{member.port}") as mch,
            grpc.aio.insecure_channel(f"127.0.0.1:{tagging.port}") as tch,
            grpc.aio.insecure_channel(f"127.0.0.1:{community.port}") as cch,
        ):
            members = member_pb2_grpc.MemberServiceStub(mch)
            tags = tagging_pb2_grpc.TaggingServiceStub(tch)
            reg = await members.RegisterMember(mpb.RegisterMemberRequest(identities=[
                mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13800001111")]), metadata=md)
            member_id = reg.member.id
            await members.RecordOrder(mpb.RecordOrderRequest(
                order_id="acl-1", member_id=member_id, channel=4, amount_fen=9_900,
                items=[mpb.OrderItem(sku="s", category="skincare", quantity=1,
                                     unit_price_fen=9_900)]), metadata=md)

            async def orders() -> float:
                try:
                    p = await tags.GetMemberProfile(
                        pb.GetMemberProfileRequest(member_id=member_id), metadata=md)
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return -1
                return p.features["orders_total"]

            await eventually(orders, lambda n: n == 1)
            # The community relay publishes its join, tagging consumes it (an
            # interaction), the community consumes the member stream (the next order
            # is attributed to the group joined): each under its own user.
            groups = community_pb2_grpc.CommunityServiceStub(cch)
            await groups.CreateGroup(cpb.CreateGroupRequest(group_id="g", group=cpb.Group(
                name="Fruit", kind=cpb.GROUP_KIND_INTEREST)), metadata=md)
            await groups.JoinGroup(cpb.JoinGroupRequest(group_id="g", member_id=member_id),
                                   metadata=md)

            async def interactions() -> float:
                p = await tags.GetMemberProfile(
                    pb.GetMemberProfileRequest(member_id=member_id), metadata=md)
                return p.features["interactions_30d"]

            await eventually(interactions, lambda n: n == 1)
            await members.RecordOrder(mpb.RecordOrderRequest(
                order_id="acl-2", member_id=member_id, channel=4, amount_fen=900),
                metadata=md)

            async def group_orders() -> int:
                day = await groups.RecordGroupActivity(cpb.RecordGroupActivityRequest(
                    group_id="g", day=datetime.now(ZoneInfo("Asia/Shanghai")).date()
                    .isoformat()), metadata=md)
                return day.orders

            await eventually(group_orders, lambda n: n == 1)
            # The tagging relay publishes on its own stream.
            await tags.CreateTag(pb.CreateTagRequest(
                tag=pb.Tag(name="vip", kind=pb.TAG_KIND_MANUAL)), metadata=md)
            await tags.AssignTags(pb.AssignTagsRequest(
                member_ids=[member_id], tag_names=["vip"]), metadata=md)
            await eventually(lambda: redis.xlen(TAGGING_STREAM), lambda n: n >= 1)
            # The consumers dead-letter what they cannot read, under their users too
            # (the groups on the member stream: tagging's, and the community's, where
            # merges and order attribution share one group).
            await redis.xadd(MEMBER_STREAM, {b"e": b"not an envelope"})
            await eventually(lambda: redis.xlen(MEMBER_STREAM + ".dead"), lambda n: n == 2)
    finally:
        await community.stop(0)
        await tagging.stop(0)
        await member.stop(0)


async def test_the_community_service_runs_on_its_acl_user(
    tmp_path: Path, redis: aioredis.Redis, service_users: dict[str, str]
):
    """Its relay (the lease script, XADD to its own stream) under the documented user."""
    from pond.community.v1 import community_pb2 as cpb
    from pond.community.v1 import community_pb2_grpc
    from pond.events.v1 import member_events_pb2 as mev

    from services.community.server import start_community_service
    from services.community.settings import CommunitySettings
    from services.runtime.eventbus import make_event

    community = await start_community_service(CommunitySettings(
        data_dir=tmp_path / "community", auth_secret=TEST_SECRET, mode="test",
        redis_url=service_users["community"], outbox_poll_seconds=0.05, event_block_ms=100),
        port=0, metrics=False)
    md = call_metadata(token(Role.OPERATOR))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{community.port}") as channel:
            stub = community_pb2_grpc.CommunityServiceStub(channel)
            await stub.CreateGroup(cpb.CreateGroupRequest(group_id="g", group=cpb.Group(
                name="g", kind=cpb.GROUP_KIND_INTEREST)), metadata=md)
            await stub.JoinGroup(cpb.JoinGroupRequest(group_id="g", member_id="m1"), metadata=md)
            await eventually(lambda: redis.xlen(COMMUNITY_STREAM), lambda n: n == 1)  # the join
            # Its consumer of the member stream (MembersMerged) works under the user too.
            merged = make_event("member", "m2", mev.MembersMerged(
                surviving_id="m2", merged_id="m1"), datetime.now(UTC))
            await redis.xadd(MEMBER_STREAM, {b"e": merged.SerializeToString()})

            async def in_group() -> bool:
                return (await stub.IsMemberInAnyGroup(cpb.IsMemberInAnyGroupRequest(
                    member_id="m2"), metadata=md)).in_group

            await eventually(in_group, bool)
    finally:
        await community.stop(0)
