"""The tagging service over real grpc.aio servers: the tag catalogue, manual tags, the
real-time event path fed by a real member service through Redis, scoring runs,
segments, category cycles and auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from pond.events.v1 import event_pb2
from pond.events.v1 import tagging_events_pb2 as tev
from pond.member.v1 import member_pb2 as mpb
from pond.tagging.v1 import tagging_pb2 as pb
from pond.tagging.v1 import tagging_pb2_grpc

from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.clock import ManualClock, epoch_micros
from services.runtime.errors import error_details
from services.tagging.api import AUTH_RULES
from services.tagging.events import STREAM
from services.tagging.runs import STALE_LOCK_SECONDS
from services.tagging.server import SERVICE, TaggingService, start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, MemberHarness, eventually, token

MANUAL, RULE, SCORE = pb.TAG_KIND_MANUAL, pb.TAG_KIND_RULE, pb.TAG_KIND_SCORE
SUCCEEDED, FAILED, RUNNING = pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_RUNNING


@dataclass
class Stack:
    """A member service and a tagging service on one Redis, sharing one clock."""

    member: MemberHarness
    settings: TaggingSettings
    clock: ManualClock
    tagging: TaggingService | None = None
    channel: grpc.aio.Channel | None = None
    stub: tagging_pb2_grpc.TaggingServiceStub | None = None

    @staticmethod
    def md(role: Role = Role.OPERATOR, member_id: str = "") -> tuple:
        return call_metadata(token(role), member_id=member_id)

    async def start(self, **overrides) -> None:
        settings = self.settings.model_copy(update=overrides)
        self.tagging = await start_tagging_service(
            settings, clock=self.clock, port=0, metrics=False
        )
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.tagging.port}")
        self.stub = tagging_pb2_grpc.TaggingServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.tagging is not None:
            await self.tagging.stop(0)
        self.tagging = self.channel = self.stub = None

    async def restart(self, **overrides) -> None:
        """A new tagging process, as far as the data dir is concerned."""
        await self.stop()
        await self.start(**overrides)


@pytest_asyncio.fixture
async def stack(member: MemberHarness, redis_url: str, tmp_path) -> AsyncIterator[Stack]:
    settings = TaggingSettings(
        jobs_enabled=False,  # scoring runs start only when a test starts them
        data_dir=tmp_path / "tagging",
        auth_secret=TEST_SECRET,
        redis_url=redis_url,
        mode="test",
        outbox_poll_seconds=0.05,
        tagging_flush_seconds=0.2,
        # Runs start only when a test starts them (one test turns the rescore on).
        tagging_rescore_delay_seconds=0,
    )
    s = Stack(member, settings, member.clock)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


# -- helpers ---------------------------------------------------------------


async def fails(call, code: grpc.StatusCode, reason: str = "") -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    got_reason, violations = error_details(info.value)
    if reason:
        assert got_reason == reason, (got_reason, info.value.details())
    return violations




async def register(s: Stack, i: int) -> str:
    resp = await s.member.stub.RegisterMember(
        mpb.RegisterMemberRequest(
            identities=[mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value=f"1380000{i:04d}")]
        ),
        metadata=s.member.md(),
    )
    return resp.member.id


async def order(s: Stack, member_id: str, order_id: str, fen: int = 10_000) -> None:
    await s.member.stub.RecordOrder(
        mpb.RecordOrderRequest(
            order_id=order_id,
            member_id=member_id,
            channel=4,
            amount_fen=fen,
            items=[mpb.OrderItem(sku="c1", category="skincare", quantity=1, unit_price_fen=fen)],
        ),
        metadata=s.member.md(),
    )


async def profile(s: Stack, member_id: str) -> pb.MemberProfile | None:
    try:
        return await s.stub.GetMemberProfile(
            pb.GetMemberProfileRequest(member_id=member_id), metadata=s.md()
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def populate(s: Stack, orders_per_member: list[int]) -> list[str]:
    """Registers one member per entry with that many orders (through the member
    service) and waits until the tagging service has seen every order."""
    ids = []
    for i, n in enumerate(orders_per_member):
        member_id = await register(s, i)
        for k in range(n):
            await order(s, member_id, f"o-{i}-{k}")
        ids.append(member_id)
    for member_id, n in zip(ids, orders_per_member, strict=True):
        await eventually(
            lambda m=member_id: profile(s, m),
            lambda p, n=n: p is not None and p.features["orders_total"] == n,
        )
    return ids


async def tag_changes(redis) -> list[tuple[str, str, bool, str]]:
    """(member id, tag, gained, run id) of every TagsChanged on the tagging stream."""
    out = []
    for _id, fields in await redis.xrange(STREAM):
        event = event_pb2.Event.FromString(fields[b"e"])
        assert event.type == "pond.events.v1.TagsChanged" and event.producer == "tagging"
        payload = tev.TagsChanged()
        event.payload.Unpack(payload)
        assert len(payload.gained_member_ids) <= 1000 and len(payload.lost_member_ids) <= 1000
        out += [(m, payload.tag, True, payload.run_id) for m in payload.gained_member_ids]
        out += [(m, payload.tag, False, payload.run_id) for m in payload.lost_member_ids]
    return out


async def known(s: Stack, *member_ids: str) -> None:
    """Members the tagging service has seen, as if their MemberRegistered had arrived."""
    engine = s.tagging.engine
    async with engine.lock:
        await engine.ensure_members(list(member_ids))


async def tag_names(s: Stack, member_id: str) -> set[str]:
    p = await profile(s, member_id)
    return {t.name for t in p.tags} if p else set()


async def create_tag(s: Stack, name: str, kind=MANUAL, expression: str = "", **kw) -> pb.Tag:
    return await s.stub.CreateTag(
        pb.CreateTagRequest(tag=pb.Tag(name=name, kind=kind, expression=expression, **kw)),
        metadata=s.md(),
    )


async def create_segment(s: Stack, seg_id: str, expression: str) -> pb.Segment:
    return await s.stub.CreateSegment(
        pb.CreateSegmentRequest(segment=pb.Segment(id=seg_id, expression=expression)),
        metadata=s.md(),
    )


async def update_segment(s: Stack, seg_id: str, **values) -> pb.Segment:
    return await s.stub.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(id=seg_id, **values),
            update_mask=field_mask_pb2.FieldMask(paths=list(values)),
        ),
        metadata=s.md(),
    )


async def check(s: Stack, member_id: str, *segments: str, md=None) -> dict[str, bool]:
    resp = await s.stub.CheckMembership(
        pb.CheckMembershipRequest(member_id=member_id, segment_ids=list(segments)),
        metadata=md or s.md(),
    )
    return dict(resp.memberships)


async def watch(s: Stack, run_id: str) -> list[pb.ScoringRun]:
    return [
        p
        async for p in s.stub.WatchScoringRun(
            pb.WatchScoringRunRequest(run_id=run_id), metadata=s.md(), timeout=30
        )
    ]


async def run_to_end(s: Stack, **request) -> pb.ScoringRun:
    started = await s.stub.StartScoringRun(pb.StartScoringRunRequest(**request), metadata=s.md())
    assert started.state == RUNNING
    progress = await watch(s, started.id)
    return progress[-1]


# -- auth rules ------------------------------------------------------------


def test_every_method_has_an_auth_rule():
    assert set(AUTH_RULES) == set(SERVICE.methods_by_name)
    assert all(AUTH_RULES.values())


async def test_auth_needs_a_token_and_the_right_role(stack: Stack):
    await fails(stack.stub.ListTags(pb.ListTagsRequest()), grpc.StatusCode.UNAUTHENTICATED)
    guide = stack.md(Role.GUIDE)
    assert (await stack.stub.ListTags(pb.ListTagsRequest(), metadata=guide)).tags
    await fails(
        stack.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(id="s", expression="orders_total > 0")),
            metadata=guide,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    await fails(
        stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=guide),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # The gateway may only ask about the member whose token it verified.
    await create_tag(stack, "vip")
    await known(stack, "m-a")
    await stack.stub.AssignTags(
        pb.AssignTagsRequest(member_ids=["m-a"], tag_names=["vip"]), metadata=stack.md()
    )
    await create_segment(stack, "vips", 'has_tag("vip")')
    gateway_a = stack.md(Role.GATEWAY, member_id="m-a")
    assert await check(stack, "m-a", "vips", md=gateway_a) == {"vips": True}
    await fails(
        stack.stub.CheckMembership(
            pb.CheckMembershipRequest(member_id="m-b", segment_ids=["vips"]), metadata=gateway_a
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await fails(
        stack.stub.ListTags(pb.ListTagsRequest(), metadata=gateway_a),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await fails(
        stack.stub.GetMemberProfile(
            pb.GetMemberProfileRequest(member_id="m-a"), metadata=gateway_a
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_gateway_without_a_member_reaches_no_member(stack: Stack):
    """Every tagging method open to the gateway is member-scoped: without the member
    it verified (x-pond-member-id) it is refused before the request is read."""
    gateway_methods = {name for name, roles in AUTH_RULES.items() if Role.GATEWAY in roles}
    requests = {"CheckMembership": [
        pb.CheckMembershipRequest(member_id="", segment_ids=["vips"]),
        pb.CheckMembershipRequest(member_id="m-a", segment_ids=["vips"]),
    ]}
    assert gateway_methods == set(requests)
    for method, calls in requests.items():
        for request in calls:
            await fails(
                getattr(stack.stub, method)(request, metadata=stack.md(Role.GATEWAY)),
                grpc.StatusCode.PERMISSION_DENIED,
                "PERMISSION_DENIED",
            )


# -- the tag catalogue -----------------------------------------------------


async def test_create_manual_and_rule_tags_with_validation(stack: Stack):
    manual = await create_tag(stack, "has_kids", display_name="有孩子", group="family")
    assert (manual.kind, manual.version, manual.member_count) == (MANUAL, 1, 0)
    assert manual.display_name == "有孩子" and manual.group == "family"
    assert manual.expression == "" and manual.create_time.seconds > 0
    rule = await create_tag(stack, "repeat_buyer", RULE, "orders_90d >= 2")
    assert (rule.kind, rule.expression, rule.version) == (RULE, "orders_90d >= 2", 1)
    assert rule.display_name == "repeat_buyer"
    # A rule may use other tags, built-in ones included.
    await create_tag(stack, "mom_buyer", RULE, 'has_tag("has_kids") and has_tag("repeat_buyer")')
    await create_tag(stack, "vip_new", RULE, 'has_tag("lifecycle:new") and spend_total > 1000')

    bad = "orders_90d >= "
    v = await fails(
        create_tag(stack, "broken", RULE, bad),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EXPRESSION",
    )
    assert v[0][0] == "tag.expression" and f"at {len(bad)}:" in v[0][1]
    v = await fails(
        create_tag(stack, "typo", RULE, "orders_total >= 1 and orders_91d >= 2"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EXPRESSION",
    )
    assert "at 22:" in v[0][1] and "orders_91d" in v[0][1] and "orders_90d" in v[0][1]
    v = await fails(
        create_tag(stack, "dangling", RULE, 'has_tag("no_such_tag")'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_REFERENCE",
    )
    assert "no_such_tag" in v[0][1]
    await fails(
        create_tag(stack, "loop", RULE, 'has_tag("loop")'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SELF_REFERENCE",
    )
    v = await fails(
        create_tag(stack, "my_score", SCORE), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert v[0][0] == "tag.kind"
    await fails(
        create_tag(stack, "nokind", pb.TAG_KIND_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT
    )
    await fails(create_tag(stack, "Bad Name"), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(
        create_tag(stack, "m_expr", MANUAL, "orders_total > 1"), grpc.StatusCode.INVALID_ARGUMENT
    )
    await fails(create_tag(stack, "rule_empty", RULE, ""), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(create_tag(stack, "has_kids"), grpc.StatusCode.ALREADY_EXISTS, "TAG_EXISTS")
    await fails(
        create_tag(stack, "lifecycle:new", RULE, "orders_total > 0"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # The refused ones were not saved.
    for name in ("broken", "typo", "dangling", "loop", "my_score", "rule_empty"):
        await fails(
            stack.stub.GetTag(pb.GetTagRequest(name=name), metadata=stack.md()),
            grpc.StatusCode.NOT_FOUND,
            "TAG_NOT_FOUND",
        )


async def test_get_and_list_tags_page_and_filter(stack: Stack):
    for i in range(5):
        await create_tag(stack, f"manual_{i}", group="g1" if i % 2 else "g2")
    await create_tag(stack, "rule_1", RULE, "orders_total >= 1")
    got = await stack.stub.GetTag(pb.GetTagRequest(name="manual_3"), metadata=stack.md())
    assert (got.name, got.kind, got.group) == ("manual_3", MANUAL, "g1")
    await fails(
        stack.stub.GetTag(pb.GetTagRequest(name="nope"), metadata=stack.md()),
        grpc.StatusCode.NOT_FOUND,
    )

    async def all_pages(**filters) -> list[pb.Tag]:
        seen, page_token = [], ""
        while True:
            page = await stack.stub.ListTags(
                pb.ListTagsRequest(page_size=4, page_token=page_token, **filters),
                metadata=stack.md(),
            )
            assert len(page.tags) <= 4
            seen += page.tags
            page_token = page.next_page_token
            if not page_token:
                return seen

    everything = await all_pages()
    names = [t.name for t in everything]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {"lifecycle:new", "rfm:important_value", "manual_0", "rule_1"} <= set(names)
    builtin = {t.name: t for t in everything if t.kind == SCORE}
    assert builtin["lifecycle:new"].group == "lifecycle"
    assert builtin["rfm:important_value"].group == "rfm"
    assert [t.name for t in await all_pages(kind=MANUAL)] == [f"manual_{i}" for i in range(5)]
    assert [t.name for t in await all_pages(kind=RULE)] == ["rule_1"]
    assert [t.name for t in await all_pages(kind=SCORE)] == sorted(builtin)
    assert [t.name for t in await all_pages(kind=MANUAL, group="g1")] == ["manual_1", "manual_3"]
    await fails(
        stack.stub.ListTags(pb.ListTagsRequest(page_token="garbage!"), metadata=stack.md()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await fails(
        stack.stub.ListTags(pb.ListTagsRequest(kind=9), metadata=stack.md()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_update_tag_expression_adds_a_version(stack: Stack):
    await create_tag(stack, "repeat_buyer", RULE, "orders_90d >= 2")

    async def update(paths: list[str], **fields) -> pb.Tag:
        return await stack.stub.UpdateTag(
            pb.UpdateTagRequest(
                tag=pb.Tag(name="repeat_buyer", **fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=stack.md(),
        )

    renamed = await update(["display_name"], display_name="复购", expression="ignored")
    assert (renamed.display_name, renamed.version) == ("复购", 1)
    assert renamed.expression == "orders_90d >= 2"
    stack.clock.advance(minutes=1)
    v2 = await update(["expression"], expression="orders_90d >= 3")
    assert (v2.version, v2.expression, v2.display_name) == (2, "orders_90d >= 3", "复购")
    versions = await stack.stub.ListTagVersions(
        pb.ListTagVersionsRequest(name="repeat_buyer"), metadata=stack.md()
    )
    assert [(v.version, v.expression) for v in versions.versions] == [
        (2, "orders_90d >= 3"),
        (1, "orders_90d >= 2"),
    ]
    assert (
        versions.versions[0].create_time.ToDatetime()
        > versions.versions[1].create_time.ToDatetime()
    )
    got = await stack.stub.GetTag(pb.GetTagRequest(name="repeat_buyer"), metadata=stack.md())
    assert (got.version, got.expression) == (2, "orders_90d >= 3")

    await fails(
        update(["expression"], expression="orders_90d >="),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EXPRESSION",
    )
    await create_tag(stack, "loyal", RULE, 'has_tag("repeat_buyer") and orders_total > 5')
    await fails(
        update(["expression"], expression='has_tag("loyal")'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SELF_REFERENCE",
    )
    await fails(update(["kind"], kind=MANUAL), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(update([]), grpc.StatusCode.INVALID_ARGUMENT)
    await create_tag(stack, "has_kids")
    await fails(
        stack.stub.UpdateTag(
            pb.UpdateTagRequest(
                tag=pb.Tag(name="has_kids", expression="orders_total > 0"),
                update_mask=field_mask_pb2.FieldMask(paths=["expression"]),
            ),
            metadata=stack.md(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await fails(
        stack.stub.ListTagVersions(pb.ListTagVersionsRequest(name="nope"), metadata=stack.md()),
        grpc.StatusCode.NOT_FOUND,
    )


# -- manual tags -----------------------------------------------------------


async def test_assign_and_remove_manual_tags(stack: Stack, redis):
    await create_tag(stack, "has_kids")
    await create_tag(stack, "vip")
    await create_tag(stack, "rich", RULE, "spend_total > 100000")
    md = stack.md(Role.GUIDE)
    await known(stack, "m1", "m2", "m3", "m4", "m9", *(f"x{i}" for i in range(1000)))

    async def assign(members: list[str], tags: list[str], *, remove: bool = False) -> int:
        if remove:
            call = stack.stub.RemoveTags(
                pb.RemoveTagsRequest(member_ids=members, tag_names=tags), metadata=md
            )
        else:
            call = stack.stub.AssignTags(
                pb.AssignTagsRequest(member_ids=members, tag_names=tags), metadata=md
            )
        return (await call).changed

    assert await assign(["m1", "m2", "m3"], ["has_kids", "vip"]) == 6
    assert await assign(["m1", "m2", "m3"], ["has_kids", "vip"]) == 0
    assert await assign(["m3", "m4"], ["vip"]) == 1
    # Each change is published once, like a computed tag's (journeys react to both).
    manual = {"has_kids", "vip"}
    gained = [(m, t, True, "") for m in ("m1", "m2", "m3") for t in manual]
    gained.append(("m4", "vip", True, ""))
    await eventually(
        lambda: tag_changes(redis),
        lambda got: sorted(c for c in got if c[1] in manual) == sorted(gained),
    )
    got = await stack.stub.GetTag(pb.GetTagRequest(name="vip"), metadata=stack.md())
    assert got.member_count == 4
    p = await profile(stack, "m1")
    kids = next(t for t in p.tags if t.name == "has_kids")
    assert kids.kind == MANUAL and kids.source == "manual by guide:tester"
    assert kids.since.ToDatetime().replace(tzinfo=stack.clock.now().tzinfo) == stack.clock.now()

    assert await assign(["m1", "m2", "m9"], ["vip"], remove=True) == 2
    assert await assign(["m1", "m2", "m9"], ["vip"], remove=True) == 0
    await eventually(
        lambda: tag_changes(redis),
        lambda got: sorted(c for c in got if c[1] == "vip" and not c[2])
        == [("m1", "vip", False, ""), ("m2", "vip", False, "")],
    )
    got = await stack.stub.GetTag(pb.GetTagRequest(name="vip"), metadata=stack.md())
    assert got.member_count == 2
    assert await tag_names(stack, "m1") >= {"has_kids"}
    assert "vip" not in await tag_names(stack, "m1")

    too_many = [f"m{i}" for i in range(1001)]
    v = await fails(
        stack.stub.AssignTags(
            pb.AssignTagsRequest(member_ids=too_many, tag_names=["vip"]), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert v[0][0] == "member_ids"
    assert await assign([f"x{i}" for i in range(1000)], ["vip"]) == 1000
    v = await fails(
        stack.stub.AssignTags(
            pb.AssignTagsRequest(member_ids=["m1"], tag_names=["nope"]), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert v == [("tag_names[0]", "unknown tag 'nope'")]
    # A member id tagging has never seen (a typo, not a member) is refused, by name.
    v = await fails(
        stack.stub.AssignTags(
            pb.AssignTagsRequest(member_ids=["m1", "m-typo"], tag_names=["vip"]), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert v == [("member_ids[1]", "unknown member 'm-typo'")]
    assert "vip" not in await tag_names(stack, "m1")
    v = await fails(
        stack.stub.RemoveTags(
            pb.RemoveTagsRequest(member_ids=[f"y{i}" for i in range(25)], tag_names=["vip"]),
            metadata=md,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert len(v) == 21 and v[-1] == ("member_ids", "25 unknown members in all")
    for computed in ("rich", "lifecycle:new"):
        v = await fails(
            stack.stub.AssignTags(
                pb.AssignTagsRequest(member_ids=["m1"], tag_names=[computed]), metadata=md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "not a manual tag" in v[0][1]
    await fails(
        stack.stub.RemoveTags(pb.RemoveTagsRequest(member_ids=[], tag_names=["vip"]), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# -- the real-time path ----------------------------------------------------


async def test_member_events_update_profile_tags_and_segments(stack: Stack, redis):
    await create_tag(stack, "repeat_buyer", RULE, "orders_90d >= 2", display_name="复购")
    await create_segment(stack, "repeaters", 'has_tag("repeat_buyer")')
    await create_segment(stack, "big_spenders", "spend_90d >= 25000")
    a, b = await register(stack, 1), await register(stack, 2)
    first = await eventually(lambda: profile(stack, a), lambda p: p is not None and bool(p.tags))
    assert first.features["orders_total"] == 0
    assert [t.name for t in first.tags] == ["lifecycle:new"]
    assert first.scores["lifecycle"] == "new"

    await order(stack, a, "o-1", 12_000)
    p = await eventually(lambda: profile(stack, a), lambda p: p.features["orders_total"] == 1)
    assert p.features["spend_total"] == 12_000 and p.features["orders_90d"] == 1
    assert "repeat_buyer" not in {t.name for t in p.tags}
    assert await check(stack, a, "repeaters", "big_spenders") == {
        "repeaters": False,
        "big_spenders": False,
    }

    await order(stack, a, "o-2", 15_000)
    p = await eventually(
        lambda: profile(stack, a), lambda p: "repeat_buyer" in {t.name for t in p.tags}
    )
    assert p.features["orders_total"] == 2 and p.features["orders_90d"] == 2
    assert p.features["spend_90d"] == 27_000 and p.features["aov"] == 13_500
    rule = next(t for t in p.tags if t.name == "repeat_buyer")
    assert (rule.kind, rule.source, rule.display_name) == (RULE, "rule v1", "复购")
    assert await check(stack, a, "repeaters", "big_spenders") == {
        "repeaters": True,
        "big_spenders": True,
    }
    assert await check(stack, b, "repeaters") == {"repeaters": False}
    got = await stack.stub.GetTag(pb.GetTagRequest(name="repeat_buyer"), metadata=stack.md())
    assert got.member_count == 1
    seg = await stack.stub.GetSegment(pb.GetSegmentRequest(id="repeaters"), metadata=stack.md())
    assert seg.count == 1
    # ...and the change is announced on the tagging stream (real time: no run id).
    await eventually(lambda: tag_changes(redis), lambda c: (a, "repeat_buyer", True, "") in c)

    # A full refund of one order takes the member back out.
    await stack.member.stub.RefundOrder(
        mpb.RefundOrderRequest(order_id="o-1", refund_id="r-1"), metadata=stack.member.md()
    )
    p = await eventually(
        lambda: profile(stack, a), lambda p: "repeat_buyer" not in {t.name for t in p.tags}
    )
    assert p.features["orders_total"] == 1 and p.features["orders_90d"] == 1
    assert p.features["spend_90d"] == 15_000
    assert await check(stack, a, "repeaters", "big_spenders") == {
        "repeaters": False,
        "big_spenders": False,
    }
    seg = await stack.stub.GetSegment(pb.GetSegmentRequest(id="repeaters"), metadata=stack.md())
    assert seg.count == 0
    changes = await eventually(
        lambda: tag_changes(redis), lambda c: (a, "repeat_buyer", False, "") in c
    )
    assert [c for c in changes if c[1] == "repeat_buyer"] == [
        (a, "repeat_buyer", True, ""),
        (a, "repeat_buyer", False, ""),
    ]


async def test_profile_of_unknown_member_is_not_found(stack: Stack):
    await fails(
        stack.stub.GetMemberProfile(
            pb.GetMemberProfileRequest(member_id="m-nobody"), metadata=stack.md()
        ),
        grpc.StatusCode.NOT_FOUND,
        "MEMBER_NOT_KNOWN_YET",
    )


# -- scoring runs ----------------------------------------------------------


async def test_scoring_run_streams_to_succeeded(stack: Stack, redis):
    ids = await populate(stack, [0, 1, 2, 3])
    started = await stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md())
    assert (started.state, started.partition, started.partitions) == (RUNNING, 0, 1)
    progress = await watch(stack, started.id)
    assert all(p.id == started.id for p in progress)
    assert [p.state for p in progress[:-1]] == [RUNNING] * (len(progress) - 1)
    done = progress[-1]
    assert (done.state, done.stage, list(done.errors)) == (SUCCEEDED, "done", [])
    assert done.members_total == done.members_scored == len(ids)
    # RFM and value quadrants need the whole population: only runs set them.
    assert done.tags_gained > 0 and done.events_published >= 1
    assert done.end_time.ToMicroseconds() >= done.start_time.ToMicroseconds()
    got = await stack.stub.GetScoringRun(
        pb.GetScoringRunRequest(run_id=started.id), metadata=stack.md()
    )
    assert got == done
    changes = await eventually(
        lambda: tag_changes(redis),
        lambda c: sum(run == started.id for *_, run in c) >= done.tags_gained + done.tags_lost,
    )
    by_run = [c for c in changes if c[3] == started.id]
    assert len(by_run) == done.tags_gained + done.tags_lost
    assert sum(gained for _, _, gained, _ in by_run) == done.tags_gained
    assert {m for m, *_ in by_run} <= set(ids)
    p = await profile(stack, ids[3])
    assert p.scores["rfm_class"] and p.scores["value_quadrant"]
    assert any(t.name.startswith("rfm:") and t.source == "score" for t in p.tags)

    # The partitions' exchange is spent once the run has succeeded.
    store = stack.tagging.engine.store
    assert await store.load_run_stats(f"{started.id}/stats") == {}
    assert await store.load_run_stats(f"{started.id}/result") == {}

    # Nothing changed since: a second run gains and loses nothing.
    again = await run_to_end(stack)
    assert (again.state, again.tags_gained, again.tags_lost) == (SUCCEEDED, 0, 0)
    assert again.events_published == 0
    runs = await stack.stub.ListScoringRuns(
        pb.ListScoringRunsRequest(page_size=1), metadata=stack.md()
    )
    assert [r.id for r in runs.runs] == [again.id] and runs.next_page_token
    rest = await stack.stub.ListScoringRuns(
        pb.ListScoringRunsRequest(page_token=runs.next_page_token), metadata=stack.md()
    )
    assert [r.id for r in rest.runs] == [started.id]
    await fails(
        stack.stub.GetScoringRun(pb.GetScoringRunRequest(run_id="run-x"), metadata=stack.md()),
        grpc.StatusCode.NOT_FOUND,
    )
    await fails(
        stack.stub.StartScoringRun(
            pb.StartScoringRunRequest(partition=1, partitions=2), metadata=stack.md()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await fails(
        stack.stub.StartScoringRun(
            pb.StartScoringRunRequest(segment_id="nope"), metadata=stack.md()
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_new_or_changed_rule_reaches_everyone_without_waiting_for_a_run(
    stack: Stack, redis
):
    await stack.restart(tagging_rescore_delay_seconds=0.1)
    await populate(stack, [0, 1, 2, 3])

    async def runs() -> list[pb.ScoringRun]:
        reply = await stack.stub.ListScoringRuns(pb.ListScoringRunsRequest(), metadata=stack.md())
        return list(reply.runs)

    async def members(tag: str) -> int:
        got = await stack.stub.GetTag(pb.GetTagRequest(name=tag), metadata=stack.md())
        return got.member_count

    # The members were scored before these rules existed; two rules saved together
    # share one run, which gives every member the new tags.
    await create_tag(stack, "buyer", RULE, "orders_total >= 1")
    await create_tag(stack, "loyal", RULE, "orders_total >= 3")
    assert stack.tagging.runner.rescore_pending
    await eventually(runs, lambda r: len(r) == 1 and r[0].state == SUCCEEDED)
    assert (await members("buyer"), await members("loyal")) == (3, 1)
    changes = await eventually(
        lambda: tag_changes(redis), lambda c: any(t == "buyer" for _, t, _, _ in c)
    )
    run_id = (await runs())[0].id
    assert {(t, run) for _, t, _, run in changes if t == "buyer"} == {("buyer", run_id)}

    # A new version of a rule applies to everyone too; a manual tag needs no run.
    await stack.stub.UpdateTag(
        pb.UpdateTagRequest(
            tag=pb.Tag(name="buyer", expression="orders_total >= 2"),
            update_mask=field_mask_pb2.FieldMask(paths=["expression"]),
        ),
        metadata=stack.md(),
    )
    await eventually(runs, lambda r: len(r) == 2 and r[0].state == SUCCEEDED)
    assert await members("buyer") == 2
    assert not stack.tagging.runner.rescore_pending
    await create_tag(stack, "has_kids")
    assert not stack.tagging.runner.rescore_pending


async def test_a_second_run_is_refused_while_one_runs(stack: Stack, monkeypatch):
    await populate(stack, [1, 2])
    runner = stack.tagging.runner
    gate = asyncio.Event()
    real_wait = runner._wait_all

    async def held(*args):
        await gate.wait()
        return await real_wait(*args)

    monkeypatch.setattr(runner, "_wait_all", held)
    first = await stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md())
    await eventually(
        lambda: stack.stub.GetScoringRun(
            pb.GetScoringRunRequest(run_id=first.id), metadata=stack.md()
        ),
        lambda r: r.stage == "score",
    )
    for request in (
        pb.StartScoringRunRequest(),
        pb.StartScoringRunRequest(resume_run_id=first.id),  # it is not dead: no twin
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.StartScoringRun(request, metadata=stack.md())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(info.value)[0] == "RUN_IN_PROGRESS"
        assert first.id in info.value.details()
    gate.set()
    done = (await watch(stack, first.id))[-1]
    assert (done.state, done.members_scored) == (SUCCEEDED, 2)
    assert done.tags_gained > 0
    runs = await stack.stub.ListScoringRuns(pb.ListScoringRunsRequest(), metadata=stack.md())
    assert [r.id for r in runs.runs] == [first.id]


async def test_a_run_keeps_real_time_changes_made_while_it_ran(stack: Stack, monkeypatch):
    await stack.restart(tagging_flush_seconds=3600)  # real-time bitmaps: flushed at stop
    await create_tag(stack, "repeat_buyer", RULE, "orders_90d >= 2")
    await create_segment(stack, "repeaters", 'has_tag("repeat_buyer")')
    a, b = await populate(stack, [1, 2])
    runner = stack.tagging.runner
    gate = asyncio.Event()
    real_wait = runner._wait_all

    async def held(*args):
        await gate.wait()
        return await real_wait(*args)

    monkeypatch.setattr(runner, "_wait_all", held)
    run = await stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md())
    await eventually(  # the run has read every history
        lambda: stack.stub.GetScoringRun(
            pb.GetScoringRunRequest(run_id=run.id), metadata=stack.md()
        ),
        lambda r: r.stage == "score",
    )
    await order(stack, a, "o-late")
    await eventually(lambda: tag_names(stack, a), lambda names: "repeat_buyer" in names)
    gate.set()
    done = (await watch(stack, run.id))[-1]
    assert done.state == SUCCEEDED
    # The run scored a's older history, but must not undo what happened since.
    p = await profile(stack, a)
    assert p.features["orders_total"] == 2
    assert "repeat_buyer" in {t.name for t in p.tags}
    assert await check(stack, a, "repeaters") == {"repeaters": True}
    assert "repeat_buyer" in await tag_names(stack, b)
    # What happened in real time is persisted (the run wrote only its own changes).
    await stack.restart()
    assert "repeat_buyer" in await tag_names(stack, a)
    assert await check(stack, a, "repeaters") == {"repeaters": True}
    # The next run agrees.
    again = await run_to_end(stack)
    assert "repeat_buyer" in await tag_names(stack, a)
    assert again.tags_lost == 0


async def test_resumed_partitioned_run_waits_for_fresh_partitions(stack: Stack, monkeypatch):
    """A resumed run never reuses what a partition computed in the failed attempt."""
    await create_tag(stack, "repeat_buyer", RULE, "orders_90d >= 2")
    ids = await populate(stack, [1, 1])
    engine, runner = stack.tagging.engine, stack.tagging.runner
    odd = next(m for m in ids if engine.index[m] % 2 == 1)  # scored by partition 1
    real_write = runner._write

    async def crash(*args):
        raise RuntimeError("partition 0 died")

    monkeypatch.setattr(runner, "_write", crash)
    doc = await runner.begin(partitions=2)
    with pytest.raises(RuntimeError):
        await asyncio.gather(runner.execute(doc.id, 0), runner.execute(doc.id, 1))
    failed = await stack.stub.GetScoringRun(
        pb.GetScoringRunRequest(run_id=doc.id), metadata=stack.md()
    )
    assert failed.state == FAILED
    monkeypatch.setattr(runner, "_write", real_write)

    # Meanwhile the odd member buys again, in real time.
    await order(stack, odd, "o-again")
    await eventually(lambda: tag_names(stack, odd), lambda names: "repeat_buyer" in names)

    # Partition 0 of the resumed run gets going first; partition 1 (a new worker)
    # starts once partition 0 waits for the other partitions.
    waiting = asyncio.Event()
    real_wait = runner._wait_all

    async def spy(*args):
        waiting.set()
        return await real_wait(*args)

    monkeypatch.setattr(runner, "_wait_all", spy)
    resumed = await runner.begin(resume_run_id=doc.id)
    partition0 = asyncio.create_task(runner.execute(resumed.id, 0))
    await asyncio.wait_for(waiting.wait(), 10)
    await runner.execute(resumed.id, 1)
    done = await asyncio.wait_for(partition0, 10)
    assert done.state == "succeeded"
    # Had partition 0 merged the failed attempt's partition 1, this would be undone.
    assert "repeat_buyer" in await tag_names(stack, odd)


async def test_one_run_at_a_time_and_resume(stack: Stack, monkeypatch):
    await populate(stack, [1, 2])
    store, runner = stack.tagging.engine.store, stack.tagging.runner
    # Another process holds the lock.
    now = epoch_micros(stack.clock.now())
    assert await store.acquire_run_lock("run-elsewhere", now, 10**9) == "run-elsewhere"
    await fails(
        stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_IN_PROGRESS",
    )
    await store.release_run_lock("run-elsewhere")

    # A run that started and crashed (its process died): it still holds the lock.
    crashed = await runner.begin()
    runner.progress.pop(crashed.id)
    await fails(
        stack.stub.StartScoringRun(pb.StartScoringRunRequest(), metadata=stack.md()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_IN_PROGRESS",
    )
    resumed = await run_to_end(stack, resume_run_id=crashed.id)
    assert (resumed.id, resumed.state) == (crashed.id, SUCCEEDED)
    assert resumed.members_scored == 2
    await fails(
        stack.stub.StartScoringRun(
            pb.StartScoringRunRequest(resume_run_id=crashed.id), metadata=stack.md()
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_FINISHED",
    )
    await fails(
        stack.stub.StartScoringRun(
            pb.StartScoringRunRequest(resume_run_id="run-unknown"), metadata=stack.md()
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    # A run that fails records why, releases the lock, and can be resumed.
    real_score = runner._score

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runner, "_score", broken)
    failed = await run_to_end(stack)
    assert failed.state == FAILED and "disk on fire" in failed.errors[0]
    monkeypatch.setattr(runner, "_score", real_score)
    resumed = await run_to_end(stack, resume_run_id=failed.id)
    assert (resumed.id, resumed.state, list(resumed.errors)) == (failed.id, SUCCEEDED, [])

    # A crashed run's lock goes stale and a new run takes over.
    stale = await runner.begin()
    runner.progress.pop(stale.id)
    stack.clock.advance(seconds=STALE_LOCK_SECONDS + 1)
    fresh = await run_to_end(stack)
    assert fresh.state == SUCCEEDED and fresh.id != stale.id


# -- segments --------------------------------------------------------------


async def test_preview_segment_saves_nothing(stack: Stack):
    ids = await populate(stack, [0, 1, 2, 3])
    before = await stack.stub.ListSegments(pb.ListSegmentsRequest(), metadata=stack.md())
    preview = await stack.stub.PreviewSegment(
        pb.PreviewSegmentRequest(expression="orders_total >= 2", sample_size=1),
        metadata=stack.md(),
    )
    assert preview.count == 2 and len(preview.sample_member_ids) == 1
    assert set(preview.sample_member_ids) <= {ids[2], ids[3]}
    full = await stack.stub.PreviewSegment(
        pb.PreviewSegmentRequest(expression='orders_total >= 1 and has_tag("lifecycle:new")'),
        metadata=stack.md(),
    )
    assert full.count == 3 and set(full.sample_member_ids) == set(ids[1:])
    after = await stack.stub.ListSegments(pb.ListSegmentsRequest(), metadata=stack.md())
    assert after == before and not after.segments
    await fails(
        stack.stub.PreviewSegment(
            pb.PreviewSegmentRequest(expression="orders_total >="), metadata=stack.md()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EXPRESSION",
    )
    await fails(
        stack.stub.PreviewSegment(
            pb.PreviewSegmentRequest(expression='in_segment("nope")'), metadata=stack.md()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_REFERENCE",
    )


async def test_segments_create_update_and_versions(stack: Stack):
    ids = await populate(stack, [0, 1, 2, 3])
    created = await create_segment(stack, "buyers", "orders_total >= 1")
    assert (created.version, created.count, created.display_name) == (1, 3, "buyers")
    stack.clock.advance(minutes=1)
    updated = await update_segment(stack, "buyers", expression="orders_total >= 3")
    assert (updated.version, updated.count) == (2, 1)
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()
    stack.clock.advance(minutes=1)
    renamed = await update_segment(stack, "buyers", display_name="买家")
    assert (renamed.version, renamed.display_name, renamed.count) == (2, "买家", 1)
    assert renamed.update_time.ToDatetime() > updated.update_time.ToDatetime()
    assert renamed.create_time == created.create_time
    got = await stack.stub.GetSegment(pb.GetSegmentRequest(id="buyers"), metadata=stack.md())
    assert (got.expression, got.version, got.display_name) == ("orders_total >= 3", 2, "买家")

    versions = await stack.stub.ListSegmentVersions(
        pb.ListSegmentVersionsRequest(id="buyers"), metadata=stack.md()
    )
    v2, v1 = versions.versions
    assert (v1.version, v1.count, v1.added, v1.removed, v1.reason) == (1, 3, 3, 0, "create")
    assert set(v1.sample_added) == set(ids[1:]) and not v1.sample_removed
    assert (v2.version, v2.count, v2.added, v2.removed, v2.reason) == (2, 1, 0, 2, "update")
    assert set(v2.sample_removed) == {ids[1], ids[2]} and not v2.sample_added
    page = await stack.stub.ListSegmentVersions(
        pb.ListSegmentVersionsRequest(id="buyers", page_size=1), metadata=stack.md()
    )
    assert [v.version for v in page.versions] == [2]
    rest = await stack.stub.ListSegmentVersions(
        pb.ListSegmentVersionsRequest(id="buyers", page_token=page.next_page_token),
        metadata=stack.md(),
    )
    assert [v.version for v in rest.versions] == [1]

    # Segments can build on segments, but never on themselves.
    await create_segment(stack, "heavy_new", 'in_segment("buyers") and has_tag("lifecycle:new")')
    for seg_id, expression in (
        ("loop", 'in_segment("loop")'),
        ("buyers", 'in_segment("buyers") or orders_total > 9'),
        ("buyers", 'in_segment("heavy_new")'),
    ):
        call = (
            update_segment(stack, seg_id, expression=expression)
            if seg_id == "buyers"
            else create_segment(stack, seg_id, expression)
        )
        await fails(call, grpc.StatusCode.INVALID_ARGUMENT, "SELF_REFERENCE")
    await fails(
        create_segment(stack, "dangling", 'in_segment("nope")'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_REFERENCE",
    )
    await fails(create_segment(stack, "buyers", "orders_total > 0"), grpc.StatusCode.ALREADY_EXISTS)
    await fails(
        create_segment(stack, "Bad Id", "orders_total > 0"), grpc.StatusCode.INVALID_ARGUMENT
    )
    await fails(create_segment(stack, "empty", ""), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(update_segment(stack, "nope", display_name="x"), grpc.StatusCode.NOT_FOUND)
    listed = await stack.stub.ListSegments(pb.ListSegmentsRequest(), metadata=stack.md())
    assert [s.id for s in listed.segments] == ["buyers", "heavy_new"]
    got = await stack.stub.GetSegment(pb.GetSegmentRequest(id="buyers"), metadata=stack.md())
    assert (got.expression, got.version) == ("orders_total >= 3", 2)


async def test_check_membership_of_many_segments(stack: Stack):
    await create_tag(stack, "vip")
    await create_tag(stack, "has_kids")
    await known(stack, "m1", "m2", "m3")
    await stack.stub.AssignTags(
        pb.AssignTagsRequest(member_ids=["m1", "m2"], tag_names=["vip"]), metadata=stack.md()
    )
    await stack.stub.AssignTags(
        pb.AssignTagsRequest(member_ids=["m2", "m3"], tag_names=["has_kids"]), metadata=stack.md()
    )
    await create_segment(stack, "vips", 'has_tag("vip")')
    await create_segment(stack, "moms", 'has_tag("has_kids")')
    await create_segment(stack, "vip_moms", 'in_segment("vips") and in_segment("moms")')
    await create_segment(stack, "others", 'not has_tag("vip")')
    everything = ("vips", "moms", "vip_moms", "others")
    assert await check(stack, "m2", *everything) == {
        "vips": True,
        "moms": True,
        "vip_moms": True,
        "others": False,
    }
    assert await check(stack, "m3", *everything) == {
        "vips": False,
        "moms": True,
        "vip_moms": False,
        "others": True,
    }
    # A member the service has never seen is in no segment.
    assert await check(stack, "m-unseen", "vips", "others") == {"vips": False, "others": False}
    await stack.stub.AssignTags(
        pb.AssignTagsRequest(member_ids=["m3"], tag_names=["vip"]), metadata=stack.md()
    )
    assert await check(stack, "m3", "vip_moms", "others") == {"vip_moms": True, "others": False}
    await fails(
        stack.stub.CheckMembership(
            pb.CheckMembershipRequest(member_id="m1", segment_ids=["vips", "nope"]),
            metadata=stack.md(),
        ),
        grpc.StatusCode.NOT_FOUND,
        "SEGMENT_NOT_FOUND",
    )
    await fails(
        stack.stub.CheckMembership(pb.CheckMembershipRequest(member_id="m1"), metadata=stack.md()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # A bad id names no segment, but is answered as what it is: checked on the miss.
    for bad, field in (("", "segment_ids[1]"), ("s" * 129, "segment_ids[1]")):
        violations = await fails(
            stack.stub.CheckMembership(
                pb.CheckMembershipRequest(member_id="m1", segment_ids=["vips", bad]),
                metadata=stack.md(),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [path for path, _ in violations] == [field]


async def test_stream_segment_members_in_chunks_and_resume(stack: Stack):
    await create_tag(stack, "vip")
    members = [f"m{i:02d}" for i in range(25)]
    await known(stack, "other", *members)
    await stack.stub.AssignTags(
        pb.AssignTagsRequest(member_ids=["other", *members], tag_names=["vip"]),
        metadata=stack.md(),
    )
    await stack.stub.RemoveTags(
        pb.RemoveTagsRequest(member_ids=["other"], tag_names=["vip"]), metadata=stack.md()
    )
    await create_segment(stack, "vips", 'has_tag("vip")')

    async def stream(
        cursor: str = "", chunk: int = 10, seg_id: str = "vips"
    ) -> list[pb.SegmentMembersChunk]:
        return [
            c
            async for c in stack.stub.StreamSegmentMembers(
                pb.StreamSegmentMembersRequest(id=seg_id, cursor=cursor, chunk_size=chunk),
                metadata=stack.md(),
            )
        ]

    chunks = await stream()
    assert [len(c.member_ids) for c in chunks] == [10, 10, 5]
    assert {c.version for c in chunks} == {1}
    streamed = [m for c in chunks for m in c.member_ids]
    assert sorted(streamed) == members and len(set(streamed)) == 25
    rest = await stream(chunks[0].cursor)
    assert [m for c in rest for m in c.member_ids] == streamed[10:]
    assert await stream(chunks[-1].cursor) == []
    whole = await stream(chunk=1000)
    assert [m for c in whole for m in c.member_ids] == streamed

    # A new version invalidates old cursors.
    await update_segment(stack, "vips", expression='has_tag("vip") and true')
    await fails(stream(chunks[0].cursor), grpc.StatusCode.FAILED_PRECONDITION, "SEGMENT_CHANGED")
    await fails(stream("garbage"), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(stream(chunk=10_001), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(stream(seg_id="nope"), grpc.StatusCode.NOT_FOUND, "SEGMENT_NOT_FOUND")


# -- category cycles and repurchase ----------------------------------------


async def test_category_cycle_makes_repurchase_due(stack: Stack):
    (buyer,) = await populate(stack, [1])
    bought_day = stack.clock.now()
    cycle = await stack.stub.SetCategoryCycle(
        pb.SetCategoryCycleRequest(category="skincare", days=30), metadata=stack.md()
    )
    assert (cycle.category, cycle.configured_days, cycle.learned_days) == ("skincare", 30, 0)
    listed = await stack.stub.ListCategoryCycles(
        pb.ListCategoryCyclesRequest(), metadata=stack.md()
    )
    assert list(listed.cycles) == [cycle]

    p = await profile(stack, buyer)
    (due,) = p.repurchase
    assert (due.category, due.due) == ("skincare", False)
    local_day = bought_day.astimezone(stack.tagging.engine.tz).date()
    assert due.due_time.ToDatetime().date() == local_day + timedelta(days=30)

    stack.clock.advance(days=29)
    assert not (await profile(stack, buyer)).repurchase[0].due
    stack.clock.advance(days=1)
    assert (await profile(stack, buyer)).repurchase[0].due
    # The repurchase-due tag is a score: a run sets it.
    assert "repurchase_due:skincare" not in await tag_names(stack, buyer)
    assert (await run_to_end(stack)).state == SUCCEEDED
    assert "repurchase_due:skincare" in await tag_names(stack, buyer)

    cleared = await stack.stub.SetCategoryCycle(
        pb.SetCategoryCycleRequest(category="skincare", days=0), metadata=stack.md()
    )
    assert cleared.configured_days == 0
    assert list((await profile(stack, buyer)).repurchase) == []
    await fails(
        stack.stub.SetCategoryCycle(
            pb.SetCategoryCycleRequest(category="skincare", days=-1), metadata=stack.md()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await fails(
        stack.stub.SetCategoryCycle(
            pb.SetCategoryCycleRequest(category="", days=3), metadata=stack.md()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
