"""Fuzzing both services over gRPC: random and mutated requests to every method of
the member and tagging services, with an operator token. Whatever comes in, the
answer is a deliberate status (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL or
UNKNOWN, which mean an input reached code that did not expect it.

Methods are discovered from the proto descriptors, so a new RPC is fuzzed without
editing this file. Field values are drawn by type (and, for strings, by what the
field's name says it holds: ids, page tokens, cursors, expressions, phones), so the
requests reach past the first checks (fuzzing.py). The run is seeded: a failure
names the seed and the request, and `POND_FUZZ_SEED=<seed>` replays it.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from pond.member.v1 import member_pb2 as mpb
from pond.tagging.v1 import tagging_pb2 as tpb

from services.member.server import SERVICE as MEMBER_SERVICE
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.errors import error_details
from services.tagging.server import SERVICE as TAGGING_SERVICE
from services.tagging.server import TaggingService, start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, MemberHarness, eventually, token
from tests.integration.fuzzing import Pool, b64_json, fuzz, targets

SEED = int(os.environ.get("POND_FUZZ_SEED", "20261130"))
REQUESTS_PER_METHOD = 48
SHOWN = int(os.environ.get("POND_FUZZ_SHOW", "15"))  # findings printed when it fails
# -- the services under fuzz -------------------------------------------------


@dataclass
class Services:
    member: MemberHarness
    tagging: TaggingService
    tagging_channel: grpc.aio.Channel
    pool: Pool


@pytest_asyncio.fixture
async def services(member: MemberHarness, redis_url: str, tmp_path) -> AsyncIterator[Services]:
    settings = TaggingSettings(
        jobs_enabled=False,  # scoring runs start only when a test starts them
        data_dir=tmp_path / "tagging", auth_secret=TEST_SECRET, redis_url=redis_url,
        mode="test", outbox_poll_seconds=0.05, tagging_flush_seconds=0.2,
        tagging_rescore_delay_seconds=0,
    )
    tagging = await start_tagging_service(settings, clock=member.clock, port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{tagging.port}")
    try:
        yield Services(member, tagging, channel, await seed(member, channel))
    finally:
        await channel.close()
        await tagging.stop(0)


async def seed(member: MemberHarness, tagging_channel: grpc.aio.Channel) -> Pool:
    """A few members with orders, points and stored value, a tag and a segment."""
    from pond.tagging.v1 import tagging_pb2_grpc

    md = member.md()
    pool = Pool()
    for i in range(3):
        m = (await member.stub.RegisterMember(mpb.RegisterMemberRequest(
            identities=[mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value=f"1380000{i:04d}")]),
            metadata=md)).member
        order = await member.stub.RecordOrder(mpb.RecordOrderRequest(
            order_id=f"fuzz-o-{i}", member_id=m.id, channel=4, amount_fen=10_000,
            items=[mpb.OrderItem(sku="c1", category="skincare", quantity=1,
                                 unit_price_fen=10_000)]), metadata=md)
        top_up = await member.stub.TopUpStoredValue(mpb.TopUpStoredValueRequest(
            member_id=m.id, amount_fen=5_000, idempotency_key=f"fuzz-t-{i}"), metadata=md)
        pay = await member.stub.PayWithStoredValue(mpb.PayWithStoredValueRequest(
            member_id=m.id, amount_fen=1_000, reference="r", idempotency_key=f"fuzz-p-{i}"),
            metadata=md)
        pool.add("member", m.id)
        pool.add("order", order.order.id)
        pool.add("entry", top_up.id, pay.id)
        pool.add("payment", pay.id)
    stub = tagging_pb2_grpc.TaggingServiceStub(tagging_channel)

    async def profiles() -> int:
        known = 0
        for member_id in pool.ids["member"]:
            try:
                await stub.GetMemberProfile(tpb.GetMemberProfileRequest(member_id=member_id),
                                            metadata=md)
                known += 1
            except grpc.aio.AioRpcError:
                pass
        return known

    await eventually(profiles, lambda known: known == 3)  # tagging has their orders
    await stub.CreateTag(tpb.CreateTagRequest(tag=tpb.Tag(name="vip", kind=tpb.TAG_KIND_MANUAL)),
                         metadata=md)
    await stub.CreateSegment(tpb.CreateSegmentRequest(segment=tpb.Segment(
        id="fuzz_seg", expression="not has_tag(\"vip\")")), metadata=md)
    run = await stub.StartScoringRun(tpb.StartScoringRunRequest(), metadata=md)
    pool.add("tag", "vip")
    pool.add("segment", "fuzz_seg")
    pool.add("run", run.id)
    return pool


async def test_no_request_makes_either_service_fail_internally(services: Services):
    rng = random.Random(SEED)
    answers, findings = await fuzz(
        rng,
        services.pool,
        [(services.member.channel, targets(MEMBER_SERVICE)),
         (services.tagging_channel, targets(TAGGING_SERVICE))],
        REQUESTS_PER_METHOD,
        call_metadata(token(Role.OPERATOR)),
    )
    sent = sum(answers.values())
    report = "\n".join(
        f"{f.path} {f.code.name} ({f.details}): {f.request}" for f in findings[:SHOWN]
    )
    assert not findings, f"seed {SEED}: {len(findings)} of {sent} requests failed:\n{report}"
    # The requests reached the code behind the checks: the operator may call every
    # method, and a good share of the calls did something.
    assert not answers.keys() & {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    assert answers[grpc.StatusCode.OK] > sent // 5, answers


# -- the crafted inputs that found these bugs (issue 7) -------------------------

# Page tokens that decode to JSON of the wrong shape, or nest deeper than a parser
# recurses, or are just too long to be one the service issued.
CRAFTED_TOKENS = [
    "eyJzIjogIngifQ==",  # {"s": "x"}
    "eyJiIjogWzFdfQ==",  # {"b": [1]}
    b64_json({"a": 1}), b64_json({"b": "x", "zz": 1}), b64_json({"s": 10**30}),
    b64_json({"v": True}),
    base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
    base64.urlsafe_b64encode(b'{"a":' * 50_000 + b"1" + b"}" * 50_000).decode(),
]


async def invalid_fields(call) -> list[str]:
    """The field paths of the INVALID_ARGUMENT `call` ends with."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        _, violations = error_details(err)
        return [f for f, _ in violations]
    raise AssertionError("the call succeeded")


async def test_crafted_page_tokens_are_invalid_argument(services: Services):
    from pond.tagging.v1 import tagging_pb2_grpc

    member_stub, md = services.member.stub, services.member.md()
    tagging = tagging_pb2_grpc.TaggingServiceStub(services.tagging_channel)
    member_id = services.pool.ids["member"][0]
    for page_token in CRAFTED_TOKENS:
        calls = [
            member_stub.ListMembers(mpb.ListMembersRequest(page_token=page_token), metadata=md),
            member_stub.ListTierChanges(mpb.ListTierChangesRequest(
                member_id=member_id, page_token=page_token), metadata=md),
            member_stub.ListOrders(mpb.ListOrdersRequest(
                member_id=member_id, page_token=page_token), metadata=md),
            tagging.ListTags(tpb.ListTagsRequest(page_token=page_token), metadata=md),
            tagging.ListSegmentVersions(tpb.ListSegmentVersionsRequest(
                id="fuzz_seg", page_token=page_token), metadata=md),
        ]
        for call in calls:
            assert await invalid_fields(call) == ["page_token"], page_token[:40]


async def test_out_of_range_timestamps_are_invalid_argument(services: Services):
    stub, md = services.member.stub, services.member.md()
    member_id = services.pool.ids["member"][0]
    cases = [
        (Timestamp(seconds=253_402_300_800), ""),  # 10000-01-01T00:00:00Z
        (Timestamp(seconds=-62_135_596_801), ""),  # before 0001-01-01
        (Timestamp(seconds=1_772_330_400, nanos=1_000_000_000), ".nanos"),
        (Timestamp(seconds=1_772_330_400, nanos=-1), ".nanos"),
    ]
    for ts, suffix in cases:
        order = mpb.RecordOrderRequest(
            order_id="fuzz-ts", member_id=member_id, channel=4, amount_fen=100, paid_time=ts)
        assert await invalid_fields(stub.RecordOrder(order, metadata=md)) == [
            f"paid_time{suffix}"]
        paid = mpb.SetPaidMembershipRequest(
            member_id=member_id, paid_until=ts, idempotency_key="fuzz-ts")
        assert await invalid_fields(stub.SetPaidMembership(paid, metadata=md)) == [
            f"paid_until{suffix}"]
    # The edges of the range are times like any other.
    edge = mpb.SetPaidMembershipRequest(member_id=member_id, idempotency_key="fuzz-edge",
                                        paid_until=Timestamp(seconds=253_402_300_799))
    assert (await stub.SetPaidMembership(edge, metadata=md)).paid_until.seconds == 253_402_300_799


async def test_a_crafted_stream_cursor_is_invalid_argument(services: Services):
    from pond.tagging.v1 import tagging_pb2_grpc

    tagging = tagging_pb2_grpc.TaggingServiceStub(services.tagging_channel)
    md = services.member.md()
    chunk = await tagging.StreamSegmentMembers(
        tpb.StreamSegmentMembersRequest(id="fuzz_seg", chunk_size=1), metadata=md).read()
    assert chunk.member_ids
    version = chunk.version
    for cursor in (f"{version}:-5", f"{version}:4294967295", f"{version}:1e3", f"{version}:",
                   f"{version}:1:2", f"{version}:\u0661", f" {version}:1"):
        stream = tagging.StreamSegmentMembers(
            tpb.StreamSegmentMembersRequest(id="fuzz_seg", cursor=cursor), metadata=md)
        assert await invalid_fields(stream.read()) == ["cursor"], cursor
    # The cursor a chunk carries still resumes the stream.
    rest = [c async for c in tagging.StreamSegmentMembers(
        tpb.StreamSegmentMembersRequest(id="fuzz_seg", cursor=chunk.cursor), metadata=md)]
    others = [m for c in rest for m in c.member_ids]
    assert len(others) == 2 and chunk.member_ids[0] not in others
