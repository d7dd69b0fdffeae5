"""What every service's transport does before and after the servicer, over real
grpc.aio servers: callers are checked before their request is decoded, request
sizes and streams per connection are bounded, errors stay small whatever was sent,
and a request id that holds a phone number never reaches the logs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from pond.member.v1 import member_pb2 as pb
from pond.tagging.v1 import tagging_pb2 as tpb
from pond.tagging.v1 import tagging_pb2_grpc
from prometheus_client import REGISTRY

from services.member.server import start_member_service
from services.runtime import logs
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.errors import MAX_VIOLATIONS
from services.runtime.logs import configure_logging
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, MemberHarness, eventually, member_settings, token

GET_MEMBER = "/pond.member.v1.MemberService/GetMember"
GARBAGE = b"\xff" * 64  # not a protobuf message: a field number 0 and a broken varint
TRAILERS_LIMIT = 8 << 10  # a default client's metadata limit


def raw_get_member(channel: grpc.aio.Channel):
    """GetMember taking the request as bytes, so a test can send anything."""
    return channel.unary_unary(GET_MEMBER, response_deserializer=pb.Member.FromString)


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def error_info(err: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list]:
    status = rpc_status.from_call(err)
    assert status is not None, err
    info, violations = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return info, violations


def trailers_size(err: grpc.aio.AioRpcError) -> int:
    return len(err.details() or "") + sum(
        len(k) + len(v) for k, v in err.trailing_metadata() or ()
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0


# -- checked before decoded ---------------------------------------------------


async def test_callers_are_checked_before_their_request_is_decoded(member: MemberHarness):
    call = raw_get_member(member.channel)
    # Were the body decoded first, these would be INVALID_ARGUMENT (or grpc's UNKNOWN).
    for metadata in ((), call_metadata("not-a-token"), (("authorization", "Basic x"),)):
        err = await status_of(call(GARBAGE, metadata=metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    big = await status_of(call(GARBAGE * 50_000, metadata=()))  # 3.2 MB, under the limit
    assert big.code() == grpc.StatusCode.UNAUTHENTICATED
    # A caller whose role may not call the method is refused before decoding too.
    guide = call_metadata(token(Role.GUIDE))
    evaluate = member.channel.unary_unary("/pond.member.v1.MemberService/EvaluateTiers")
    err = await status_of(evaluate(GARBAGE, metadata=guide))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_body_that_does_not_parse_is_invalid_argument(member: MemberHarness):
    labels = {"method": GET_MEMBER, "reason": "MALFORMED_REQUEST"}
    before = sample("pond_grpc_errors_total", **labels)
    err = await status_of(raw_get_member(member.channel)(GARBAGE, metadata=member.md()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, _ = error_info(err)
    assert (info.reason, info.domain) == ("MALFORMED_REQUEST", "pond.rpc")
    assert sample("pond_grpc_errors_total", **labels) == before + 1
    # A well-formed body of the same call is served.
    body = pb.GetMemberRequest(member_id="nobody").SerializeToString()
    err = await status_of(raw_get_member(member.channel)(body, metadata=member.md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_request_over_the_receive_limit_is_refused(member: MemberHarness):
    # The default limit is 4 MB; this is a well-formed GetMember of 5 MB.
    request = pb.GetMemberRequest(member_id="m" * (5 << 20))
    err = await status_of(member.stub.GetMember(request, metadata=member.md()))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest_asyncio.fixture
async def small_server(tmp_path, monkeypatch) -> AsyncIterator[grpc.aio.Channel]:
    """A member service configured from the environment: 64 KiB requests, one call
    at a time per connection."""
    monkeypatch.setenv("POND_MAX_RECEIVE_BYTES", str(64 << 10))
    monkeypatch.setenv("POND_MAX_CONCURRENT_STREAMS", "1")
    service = await start_member_service(member_settings(tmp_path), port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield channel
    finally:
        await channel.close()
        await service.stop(0)


async def test_limits_come_from_the_settings(small_server: grpc.aio.Channel):
    md = call_metadata(token(Role.OPERATOR))
    call = raw_get_member(small_server)
    small = pb.GetMemberRequest(member_id="m" * 100).SerializeToString()
    large = pb.GetMemberRequest(member_id="m" * (100 << 10)).SerializeToString()
    assert (await status_of(call(small, metadata=md))).code() == grpc.StatusCode.NOT_FOUND
    err = await status_of(call(large, metadata=md))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # While one stream is open on the connection (a health watch), another call waits
    # for it: here until its deadline.
    watch = health_pb2_grpc.HealthStub(small_server).Watch(health_pb2.HealthCheckRequest())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    waiting = await status_of(call(small, metadata=md, timeout=1))
    assert waiting.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    watch.cancel()
    err = await status_of(call(small, metadata=md, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- errors stay small --------------------------------------------------------


@pytest_asyncio.fixture
async def tagging_stub(member: MemberHarness, tmp_path) -> AsyncIterator:
    settings = TaggingSettings(data_dir=tmp_path / "tagging", auth_secret=TEST_SECRET,
                               mode="test", tagging_rescore_delay_seconds=0)
    service = await start_tagging_service(settings, clock=member.clock, port=0, metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield tagging_pb2_grpc.TaggingServiceStub(channel)
    finally:
        await channel.close()
        await service.stop(0)


async def test_an_over_long_id_is_refused_without_being_echoed(member: MemberHarness,
                                                               tagging_stub):
    huge = "x" * 300_000
    md = member.md()
    calls = [
        ("member_id", member.stub.GetMember(pb.GetMemberRequest(member_id=huge), metadata=md)),
        ("order_id", member.stub.GetOrder(pb.GetOrderRequest(order_id=huge), metadata=md)),
        ("name", tagging_stub.GetTag(tpb.GetTagRequest(name=huge), metadata=md)),
        ("id", tagging_stub.GetSegment(tpb.GetSegmentRequest(id=huge), metadata=md)),
        ("member_id", tagging_stub.GetMemberProfile(
            tpb.GetMemberProfileRequest(member_id=huge), metadata=md)),
        ("run_id", tagging_stub.GetScoringRun(tpb.GetScoringRunRequest(run_id=huge),
                                              metadata=md)),
        ("id", tagging_stub.ListSegmentVersions(tpb.ListSegmentVersionsRequest(id=huge),
                                                metadata=md)),
    ]
    for field, call in calls:
        err = await status_of(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.details())
        _, violations = error_info(err)
        assert violations == [(field, "must be at most 128 characters")]
        assert trailers_size(err) < 2_000


async def test_errors_echo_values_shortened(member: MemberHarness, tagging_stub):
    # 100 unknown segments of a legal length: the message named them all (12 kB).
    ids = [f"{i:03d}" + "s" * 125 for i in range(100)]
    err = await status_of(tagging_stub.CheckMembership(
        tpb.CheckMembershipRequest(member_id="m1", segment_ids=ids), metadata=member.md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info, _ = error_info(err)
    assert info.reason == "SEGMENT_NOT_FOUND"
    assert info.metadata["id"].startswith("000sss") and info.metadata["id"].endswith("\u2026")
    assert len(info.metadata["id"]) <= 64 and len(err.details()) <= 256
    assert trailers_size(err) < 2_000


async def test_many_violations_are_listed_up_to_a_limit(member: MemberHarness):
    bad = [pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=f"not-a-phone-{i}-" + "z" * 100)
           for i in range(1_000)]
    # A default client: the error must fit its metadata limit to arrive as itself.
    err = await status_of(member.stub.RegisterMember(pb.RegisterMemberRequest(identities=bad),
                                                     metadata=member.md()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    info, violations = error_info(err)
    assert 1 <= len(violations) <= MAX_VIOLATIONS
    assert violations[0] == ("identities", "at most 8")
    listed = len(violations)
    assert info.metadata["violations_not_listed"] == str(1_001 - listed)
    assert err.details().endswith(" more") and "and " in err.details()
    assert trailers_size(err) < TRAILERS_LIMIT // 2


# -- request ids that hold phone numbers ----------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    saved_rpc = logs._rpc_log_batch, logs._rpc_log
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    logs._rpc_log_batch, logs._rpc_log = saved_rpc


PHONE_IDS = ["184.9125.9190", "184_9125_9190", "184:9125:9190", "918491259190",
             "req-184-9125-9190", "8618491259190", "1.8.4.9.1.2.5.9.1.9.0", "ab18491259190"]
SAFE_IDS = ["req-2026-11-30.abc", "pos-7.call:42", "550e8400-e29b-41d4-a716-446655440000"]


async def test_request_ids_holding_phone_numbers_are_replaced_and_never_logged(
    member: MemberHarness, capsys, restore_logging
):
    configure_logging("info", "json")  # the services' log lines, to the captured stdout

    async def request_id(sent: str) -> str:
        call = member.stub.GetTierProgram(
            pb.GetTierProgramRequest(),
            metadata=call_metadata(token(Role.OPERATOR), request_id=sent))
        await call
        return dict(await call.trailing_metadata())["x-request-id"]

    used = {sent: await request_id(sent) for sent in PHONE_IDS + SAFE_IDS}
    for sent in PHONE_IDS:
        assert used[sent] != sent and "9125" not in used[sent], sent
    for sent in SAFE_IDS:
        assert used[sent] == sent

    out = ""

    async def logged() -> set[str]:
        nonlocal out
        out += capsys.readouterr().out
        return {json.loads(line).get("request_id") for line in out.splitlines()}

    await eventually(logged, lambda ids: set(used.values()) <= ids, timeout=10)
    for sent in PHONE_IDS:
        assert sent not in out
    assert "18491259190" not in out.replace(".", "").replace("_", "").replace(":", "")


async def test_concurrent_calls_each_see_only_their_own_metadata(member: MemberHarness):
    """The caller, its member and its request id are read per call (from the metadata
    grpc converted for that call's handler lookup, in the call's own task): hundreds
    of calls in flight with different tokens never see each other's."""
    import asyncio

    phones = {"13912345678": "", "13987654321": ""}
    for phone in phones:
        reply = await member.stub.RegisterMember(pb.RegisterMemberRequest(
            identities=[pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=phone)]),
            metadata=member.md())
        phones[phone] = reply.member.id
    (phone_a, a), (_phone_b, b) = phones.items()

    async def one(i: int) -> None:
        kind, sent = i % 3, f"concurrent-{i}"
        if kind == 0:  # the back office: phones in clear
            md = call_metadata(token(Role.OPERATOR), request_id=sent)
        else:  # the gateway for member a: a, masked; never b
            md = call_metadata(token(Role.GATEWAY), request_id=sent, member_id=a)
        target = b if kind == 2 else a
        call = member.stub.GetMember(pb.GetMemberRequest(member_id=target), metadata=md)
        if kind == 2:
            err = await status_of(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (i, err.details())
        else:
            got = await call
            shown = [x.value for x in got.identities if x.kind == pb.IDENTITY_KIND_PHONE]
            assert got.id == a and shown == [phone_a if kind == 0 else "139****5678"], (i, shown)
        assert dict(await call.trailing_metadata())["x-request-id"] == sent, i

    await asyncio.gather(*(one(i) for i in range(300)))


async def test_a_failed_call_returns_its_request_id(member: MemberHarness):
    for md, code in (
        ((("x-request-id", "pos-7.fail:1"),), grpc.StatusCode.UNAUTHENTICATED),
        (call_metadata(token(Role.OPERATOR), request_id="pos-7.fail:2"),
         grpc.StatusCode.NOT_FOUND),
    ):
        err = await status_of(member.stub.GetMember(
            pb.GetMemberRequest(member_id="nobody"), metadata=md))
        assert err.code() == code
        sent = dict(md)["x-request-id"]
        assert dict(err.trailing_metadata())["x-request-id"] == sent
    # One the server made (none sent) is returned as well.
    err = await status_of(member.stub.GetMember(pb.GetMemberRequest(member_id="nobody"),
                                                metadata=member.md()))
    assert dict(err.trailing_metadata())["x-request-id"]
