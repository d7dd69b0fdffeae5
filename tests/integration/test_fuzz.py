"""Fuzzing both services over gRPC: random and mutated requests to every method of
the member and tagging services, with an operator token. Whatever comes in, the
answer is a deliberate status (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL or
UNKNOWN, which mean an input reached code that did not expect it.

Methods are discovered from the proto descriptors, so a new RPC is fuzzed without
editing this file. Field values are drawn by type (and, for strings, by what the
field's name says it holds: ids, page tokens, cursors, expressions, phones), so the
requests reach past the first checks. The run is seeded: a failure names the seed
and the request, and `POND_FUZZ_SEED=<seed>` replays it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest_asyncio
from google.protobuf import descriptor, message, message_factory
from google.protobuf.descriptor import FieldDescriptor as F
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

SEED = int(os.environ.get("POND_FUZZ_SEED", "20261130"))
REQUESTS_PER_METHOD = 48
GARBAGE_SHARE = 0.08  # requests sent as random bytes instead of a message
IN_FLIGHT = 8
STREAM_TIMEOUT = 1.0  # a watched run that never ends is not a finding
SHOWN = int(os.environ.get("POND_FUZZ_SHOW", "15"))  # findings printed when it fails
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


# Page tokens: what the services issue, the wrong shapes, and nonsense.
PAGE_TOKENS = [
    _b64({"a": "m-1"}), _b64({"b": "e-1"}), _b64({"s": 1}), _b64({"v": 2}),
    "eyJzIjogIngifQ==", "eyJiIjogWzFdfQ==", _b64({"a": None}), _b64({"v": "x"}),
    _b64({"s": 10**30}), _b64({"s": -5}), _b64({"v": 1.5}), _b64({"a": {"b": 1}}),
    _b64([1, 2]), _b64("a"), _b64(7), _b64({}), _b64({"a": "x", "zz": 1}),
    base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),
    base64.urlsafe_b64encode(b'{"a":' * 5_000 + b"1" + b"}" * 5_000).decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\x00garbage").decode(),
    "not base64!", "====", "eyJ", "%%%", "a" * 300_000,
]
CURSORS = ["1:-5", "0:-5", "1:0", "1:", ":1", "x:y", "1:2:3", "99999999999999999999:1",
           "1:99999999999999999999999", "-1:-1", "1:4294967296", "1:1e3", " 1 : 2 "]
EXPRESSIONS = ["orders_90d >= 1", "has_tag(\"vip\")", "not has_tag(\"vip\")",
               "in_segment(\"fuzz_seg\")", "bought(\"skincare\", 90)",
               "bought(\"skincare\", -1)", "bought(\"skincare\", 1e308)",
               "days_since_bought(\"skincare\") > 3", "orders_90d / 0 > 1",
               "orders_90d >= 1e309", "(" * 5_000 + "1" + ")" * 5_000, "1 +" * 3_000 + "1",
               "has_tag(" + "\"x\"" * 100 + ")", "", "and", "\x00", "orders_90d >= -9e18"]
PHONES = ["13812345678", "+86 138-1234-5678", "138.1234.5678", "8613812345678", "1381234567",
          "00000000000", "+8613812345678" * 50, "１３８１２３４５６７８"]
TIMESTAMP_SECONDS = [0, 1_764_000_000, 1_900_000_000, -1, -62_135_596_800, -62_135_596_801,
                     253_402_300_799, 253_402_300_800, 2**62, -(2**62), 2**63 - 1]
TIMESTAMP_NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1]
INT32 = [0, 1, -1, 2, 7, 100, 1000, 2**31 - 1, -(2**31)]
# Shares of wild fields: plausible requests, plausible ones with a field or two
# mutated, and mostly wild ones.
WILDNESS = (0.0, 0.1, 0.1, 0.25, 0.6)
NOW_SECONDS = 1_772_330_400  # the member harness's clock: 2026-03-01T02:00:00Z
INT64 = [*INT32, 10_000_000_000, 2**53, 2**63 - 1, -(2**63)]


@dataclass
class Pool:
    """Real ids made while seeding, by kind, so fuzzed requests reach past 'not found'."""

    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, *ids: str) -> None:
        self.ids.setdefault(kind, []).extend(ids)

    def pick(self, rng: random.Random, field_name: str) -> str:
        """An id of the kind the field's name says (member_id: a member), else any."""
        kinds = [k for k in self.ids if k in field_name]
        if not kinds:
            kinds = (
                ["segment"] if field_name in ("id", "ids")
                else ["tag"] if "name" in field_name
                else list(self.ids)
            )
        return rng.choice(self.ids[rng.choice(kinds)])


class RequestMaker:
    """Builds requests field by field. Each value is either plausible (what a real
    caller would send: known ids, small positive numbers, valid enums, times near
    now) or wild (out of range, huge, malformed), so that a request with a few wild
    fields among plausible ones gets past the first checks to the code behind them."""

    def __init__(self, rng: random.Random, pool: Pool) -> None:
        self.rng = rng
        self.pool = pool
        self.wildness = 0.5
        self.fresh = 0

    def message(self, cls: type[message.Message], wildness: float) -> message.Message:
        self.wildness = wildness
        msg = cls()
        self.fill(msg, 0)
        return msg

    def wild(self) -> bool:
        return self.rng.random() < self.wildness

    def fill(self, msg: message.Message, depth: int) -> None:
        rng = self.rng
        desc = msg.DESCRIPTOR
        if desc.full_name == "google.protobuf.Timestamp":
            if self.wild():
                msg.seconds = rng.choice([*TIMESTAMP_SECONDS, rng.randint(-(10**11), 10**11)])
                msg.nanos = rng.choice([*TIMESTAMP_NANOS, rng.randint(0, 999_999_999)])
            else:
                msg.seconds = NOW_SECONDS + rng.randint(-400 * 86_400, 400 * 86_400)
            return
        if desc.full_name == "google.protobuf.FieldMask":
            names = ["profile", "profile.name", "store_id", "consents", "expression",
                     "display_name", "group", "description", "co_branded", "guide_id"]
            if self.wild():
                names += ["id", "name", "kind", "x.y", "", "profile.", "a" * 300]
            msg.paths.extend(rng.choice(names) for _ in range(rng.randint(0, 4)))
            return
        for f in desc.fields:
            if rng.random() < 0.1 + self.wildness / 3:  # left unset
                continue
            if f.is_repeated:
                self.repeated(msg, f, depth)
            elif f.type == F.TYPE_MESSAGE:
                if depth < 4:
                    getattr(msg, f.name).SetInParent()
                    self.fill(getattr(msg, f.name), depth + 1)
            else:
                setattr(msg, f.name, self.scalar(f))

    def repeated(self, msg: message.Message, f: descriptor.FieldDescriptor, depth: int) -> None:
        rng = self.rng
        many = 1001 if f.type != F.TYPE_MESSAGE else 201
        count = rng.choice([0, 3, 5, 101, many]) if self.wild() else rng.choice([1, 1, 2, 3])
        target = getattr(msg, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            entry = f.message_type.fields_by_name
            key_f, value_f = entry["key"], entry["value"]
            for _ in range(min(count, 20)):
                key = self.scalar(key_f)
                if value_f.type == F.TYPE_MESSAGE:
                    self.fill(target[key], depth + 1)
                else:
                    target[key] = self.scalar(value_f)
        elif f.type == F.TYPE_MESSAGE:
            if depth < 4:
                for _ in range(count):
                    self.fill(target.add(), depth + 1)
        else:
            target.extend(self.scalar(f) for _ in range(count))

    def scalar(self, f: descriptor.FieldDescriptor) -> object:
        rng = self.rng
        t = f.type
        if t == F.TYPE_STRING:
            return self.wild_string(f.name) if self.wild() else self.plausible_string(f.name)
        if t == F.TYPE_BYTES:
            return rng.randbytes(rng.choice([0, 1, 16, 5000]))
        if t == F.TYPE_BOOL:
            return rng.random() < 0.5
        if t == F.TYPE_ENUM:
            values = [v.number for v in f.enum_type.values]
            if self.wild():
                return rng.choice([*values, -1, 99, 2**31 - 1, -(2**31)])
            return rng.choice(values[1:] or values)
        if not self.wild():
            return self.plausible_number(f)
        if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return rng.choice([0.0, -1.0, 0.5, 1e308, -1e308, float("inf"), float("-inf"),
                               float("nan"), rng.uniform(-1e6, 1e6)])
        if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
            return rng.choice([*INT32, rng.randint(-1000, 1000)])
        if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
            return rng.choice([0, 1, 7, 1000, 2**32 - 1])
        if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
            return rng.choice([0, 1, 1000, 2**64 - 1])
        return rng.choice([*INT64, rng.randint(-(10**12), 10**12)])

    def plausible_number(self, f: descriptor.FieldDescriptor) -> object:
        rng = self.rng
        if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return float(rng.randint(0, 100))
        if f.name in ("page_size", "sample_size", "level", "tier_level", "partition"):
            return rng.randint(0, 3)
        if f.name in ("partitions",):
            return 1
        return rng.choice([1, 2, 5, 30, 100, 1000, 10_000])

    def plausible_string(self, name: str) -> str:
        rng = self.rng
        if name.endswith(("page_token", "cursor", "resume_run_id")):
            return ""
        if name == "expression":
            return rng.choice(EXPRESSIONS[:8])
        if name == "value":
            return f"139{rng.randint(0, 99_999_999):08d}"
        if name == "birthday":
            return "1990-05-01"
        if name == "category":
            return "skincare"
        fresh_ids = ("idempotency_key", "order_id", "refund_id", "name", "id")
        if name in fresh_ids and rng.random() < 0.5:
            self.fresh += 1  # a new one: the call does something
            return f"fz{self.fresh}"
        if name.endswith(("id", "ids", "name", "names")):
            return self.pool.pick(rng, name)
        return rng.choice(["", "x", "skincare", "store-1", "王小明", "vip"])

    def wild_string(self, name: str) -> str:
        rng = self.rng
        if name.endswith("page_token") and rng.random() < 0.7:
            return rng.choice(PAGE_TOKENS)
        if name == "cursor" and rng.random() < 0.7:
            return rng.choice(CURSORS)
        if name == "expression" and rng.random() < 0.7:
            return rng.choice(EXPRESSIONS)
        if name == "value" and rng.random() < 0.5:
            return rng.choice(PHONES)
        if name == "birthday" and rng.random() < 0.6:
            return rng.choice(["2000-02-30", "0000-00-00", "9999-12-31", "1990-5-1", "--",
                               "02-29", "2024-02-29", "1-1-1"])
        return rng.choice([
            "", " ", "\x00", "a" * 129, "b" * 1000, "c" * 300_000,
            "名字" * rng.randint(1, 100), "🙂" * 50, "\ud7ff\ue000",
            "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 40))),
            "".join(rng.choice("abc_:.-019") for _ in range(rng.randint(1, 20))),
            rng.choice(PHONES), rng.choice(PAGE_TOKENS), rng.choice(CURSORS),
            self.pool.pick(rng, name) + rng.choice(["x", " ", "\x00", ":-1"]),
        ])


@dataclass
class Target:
    path: str
    streaming: bool
    request_cls: type[message.Message]
    response_cls: type[message.Message]


def targets(service: descriptor.ServiceDescriptor) -> list[Target]:
    return [
        Target(
            f"/{service.full_name}/{m.name}",
            m.server_streaming,
            message_factory.GetMessageClass(m.input_type),
            message_factory.GetMessageClass(m.output_type),
        )
        for m in service.methods
    ]


@dataclass
class Finding:
    path: str
    code: grpc.StatusCode
    details: str
    request: str


async def send(
    channel: grpc.aio.Channel, target: Target, payload: bytes, metadata: tuple
) -> tuple[grpc.StatusCode, str]:
    """Sends one serialized request; returns the status the server answered."""
    decode = target.response_cls.FromString
    try:
        if target.streaming:
            call = channel.unary_stream(target.path, response_deserializer=decode)(
                payload, metadata=metadata, timeout=STREAM_TIMEOUT
            )
            seen = 0
            async for _ in call:
                seen += 1
                if seen == 3:
                    call.cancel()
                    break
        else:
            await channel.unary_unary(target.path, response_deserializer=decode)(
                payload, metadata=metadata, timeout=30
            )
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED, ""
    return grpc.StatusCode.OK, ""


def _shown(msg: message.Message | bytes) -> str:
    text = repr(msg[:60]) if isinstance(msg, bytes) else str(msg)
    return text if len(text) < 600 else text[:600] + "..."


async def fuzz(
    rng: random.Random,
    pool: Pool,
    services: list[tuple[grpc.aio.Channel, list[Target]]],
    per_method: int,
) -> tuple[collections.Counter[grpc.StatusCode], list[Finding]]:
    """Sends `per_method` requests to every method; returns how many got each status
    code, and the requests that got INTERNAL or UNKNOWN."""
    maker = RequestMaker(rng, pool)
    metadata = call_metadata(token(Role.OPERATOR))
    jobs: list[tuple[grpc.aio.Channel, Target, bytes, Callable[[], str]]] = []
    for channel, method_targets in services:
        for target in method_targets:
            for _ in range(per_method):
                if rng.random() < GARBAGE_SHARE:
                    raw = rng.randbytes(rng.randint(1, 300))
                    jobs.append((channel, target, raw, lambda raw=raw: _shown(raw)))
                else:
                    msg = maker.message(target.request_cls, rng.choice(WILDNESS))
                    jobs.append((channel, target, msg.SerializeToString(),
                                 lambda msg=msg: _shown(msg)))
    rng.shuffle(jobs)
    findings: list[Finding] = []
    answers: collections.Counter[grpc.StatusCode] = collections.Counter()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(channel, target, payload, shown) -> None:
        async with gate:
            code, details = await send(channel, target, payload, metadata)
        answers[code] += 1
        if code in BAD_CODES:
            findings.append(Finding(target.path, code, details[:200], shown()))

    await asyncio.gather(*(one(*job) for job in jobs))
    return answers, findings


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
    _b64({"a": 1}), _b64({"b": "x", "zz": 1}), _b64({"s": 10**30}), _b64({"v": True}),
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
