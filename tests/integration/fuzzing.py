"""Random and mutated requests for any gRPC service, built from its descriptors (see
test_fuzz.py): every method, every field, values drawn by type and by what a field's
name says it holds."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor, message, message_factory
from google.protobuf.descriptor import FieldDescriptor as F

GARBAGE_SHARE = 0.08  # requests sent as random bytes instead of a message
IN_FLIGHT = 8
STREAM_TIMEOUT = 1.0  # a watched run that never ends is not a finding
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def b64_json(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


# Page tokens: what the services issue, the wrong shapes, and nonsense.
PAGE_TOKENS = [
    b64_json({"a": "m-1"}), b64_json({"b": "e-1"}), b64_json({"s": 1}), b64_json({"v": 2}),
    "eyJzIjogIngifQ==", "eyJiIjogWzFdfQ==", b64_json({"a": None}), b64_json({"v": "x"}),
    b64_json({"s": 10**30}), b64_json({"s": -5}), b64_json({"v": 1.5}), b64_json({"a": {"b": 1}}),
    b64_json([1, 2]), b64_json("a"), b64_json(7), b64_json({}), b64_json({"a": "x", "zz": 1}),
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
    metadata: tuple,
) -> tuple[collections.Counter[grpc.StatusCode], list[Finding]]:
    """Sends `per_method` requests to every method; returns how many got each status
    code, and the requests that got INTERNAL or UNKNOWN."""
    maker = RequestMaker(rng, pool)
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
