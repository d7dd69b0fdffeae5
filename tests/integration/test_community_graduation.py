"""Graduation over real services (member, tagging with a segment, community): the
segment's members in first-level groups move into a KOC pool in its fill order with
capacity kept and an overflow group opened; the dry run shows the same moves and
writes nothing; the batch is idempotent by its id; entry rules and bad targets are
refused with their reasons."""

from __future__ import annotations

import grpc
from pond.community.v1 import community_pb2 as pb
from pond.tagging.v1 import tagging_pb2 as tpb

from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    Pair,
    community_settings,
    fails,
    with_tagging_fixture,
)

KOC = pb.GROUP_KIND_KOC
FAILED = grpc.StatusCode.FAILED_PRECONDITION


async def graduate(c: Community, graduation_id: str, rule_id: str = "koc",
                   segment_id: str = "heavy", dry_run: bool = False,
                   ) -> pb.GraduateMembersResponse:
    return await c.stub.GraduateMembers(pb.GraduateMembersRequest(
        graduation_id=graduation_id, segment_id=segment_id, target_rule_id=rule_id,
        dry_run=dry_run), metadata=c.md())


def moves(r: pb.GraduateMembersResponse) -> list[tuple]:
    return [(m.member_id, list(m.from_group_ids), m.to_group_id, m.opens_group)
            for m in r.moves]


async def active_members(c: Community, group_id: str) -> list[str]:
    reply = await c.stub.ListGroupMembers(pb.ListGroupMembersRequest(group_id=group_id),
                                          metadata=c.md())
    return sorted(m.member_id for m in reply.memberships)


async def test_a_segment_graduates_from_first_level_groups_into_a_koc_pool(with_tagging):
    c, tagging = with_tagging
    m1, m2, m3, m4 = [await c.register(f"1380000100{i}") for i in range(1, 5)]
    m1, m2 = sorted([m1, m2])

    async def known(mid: str) -> bool:
        try:
            await tagging.GetMemberProfile(tpb.GetMemberProfileRequest(member_id=mid),
                                           metadata=c.md())
        except grpc.aio.AioRpcError:
            return False
        return True

    for m in (m1, m2, m3, m4):
        await eventually(lambda m=m: known(m), lambda ok: ok)
    await tagging.CreateTag(tpb.CreateTagRequest(tag=tpb.Tag(
        name="heavy_buyer", kind=tpb.TAG_KIND_MANUAL)), metadata=c.md())
    await tagging.AssignTags(tpb.AssignTagsRequest(member_ids=[m1, m2, m3],
                                                   tag_names=["heavy_buyer"]), metadata=c.md())
    await tagging.CreateSegment(tpb.CreateSegmentRequest(segment=tpb.Segment(
        id="heavy", expression='has_tag("heavy_buyer")')), metadata=c.md())
    await c.group("f1")  # first level by default
    for m in (m1, m2, m4):
        await c.join("f1", m)
    # The KOC pool: one group with room for one, a template for more (capacity 1).
    await c.rule("koc", template=pb.GroupTemplate(name_prefix="KOC", kind=KOC, capacity=1))
    await c.group("koc-first", kind=KOC, pool_id="koc", capacity=1)

    dry = await graduate(c, "g-1", dry_run=True)
    expected = [(m1, ["f1"], "koc-first", False), (m2, ["f1"], "koc-2", True)]
    assert moves(dry) == expected and dry.dry_run
    assert (dry.segment_members, dry.not_in_first_level) == (3, 1)  # m3 is in no group
    assert await active_members(c, "f1") == sorted([m1, m2, m4])  # nothing written
    await fails(c.stub.GetGroup(pb.GetGroupRequest(group_id="koc-2"), metadata=c.md()),
                grpc.StatusCode.NOT_FOUND)

    real = await graduate(c, "g-1")
    assert moves(real) == expected and not real.dry_run and not real.replayed
    assert await active_members(c, "f1") == [m4]
    assert await active_members(c, "koc-first") == [m1]
    assert await active_members(c, "koc-2") == [m2]
    history = await c.stub.ListGroupMembers(pb.ListGroupMembersRequest(
        group_id="f1", include_past=True), metadata=c.md())
    removed = {m.member_id: (m.state, m.removed_by, m.reason) for m in history.memberships}
    assert removed[m1] == (pb.MEMBERSHIP_STATE_REMOVED, "graduation:g-1", "graduated")

    again = await graduate(c, "g-1")
    assert again.replayed and moves(again) == expected
    assert await active_members(c, "koc-2") == [m2]
    await fails(graduate(c, "g-1", segment_id="other"), FAILED, "IDEMPOTENCY_KEY_REUSED")
    # A new batch finds nobody left in first-level groups.
    later = await graduate(c, "g-2", dry_run=True)
    assert list(later.moves) == [] and later.not_in_first_level == 3


async def test_entry_rules_and_bad_targets_are_reported(with_tagging):
    c, tagging = with_tagging
    m1 = await c.register("13800002001")

    async def known() -> bool:
        try:
            await tagging.GetMemberProfile(tpb.GetMemberProfileRequest(member_id=m1),
                                           metadata=c.md())
        except grpc.aio.AioRpcError:
            return False
        return True

    await eventually(known, lambda ok: ok)
    await tagging.CreateSegment(tpb.CreateSegmentRequest(segment=tpb.Segment(
        id="everyone", expression="orders_total >= 0")), metadata=c.md())
    await c.group("f1")
    await c.join("f1", m1)
    await c.rule("vip", template=pb.GroupTemplate(
        kind=pb.GROUP_KIND_VIP, entry_rules=pb.EntryRules(min_tier_level=5)))
    for dry_run in (True, False):
        r = await graduate(c, f"vip-{dry_run}", "vip", "everyone", dry_run=dry_run)
        assert [(s.member_id, s.reason) for s in r.skipped] == [(m1, "ENTRY_TIER_TOO_LOW")]
        assert list(r.moves) == []
    assert await active_members(c, "f1") == [m1]
    await c.rule("flash", template=pb.GroupTemplate(kind=pb.GROUP_KIND_INTEREST))
    await fails(graduate(c, "x", "flash", "everyone"), FAILED, "NOT_A_GRADUATION_TARGET")
    await fails(graduate(c, "x", "vip", "no-such-segment"), FAILED, "SEGMENT_NOT_FOUND")
    await fails(graduate(c, "x", "nope", "everyone"), grpc.StatusCode.NOT_FOUND)
    violations = await fails(c.stub.GraduateMembers(pb.GraduateMembersRequest(
        graduation_id="bad id!"), metadata=c.md()), grpc.StatusCode.INVALID_ARGUMENT)
    assert {p for p, _ in violations} == {"graduation_id", "segment_id", "target_rule_id"}
    await fails(c.stub.GraduateMembers(pb.GraduateMembersRequest(
        graduation_id="x", segment_id="everyone", target_rule_id="vip"),
        metadata=c.md(Role.GUIDE)), grpc.StatusCode.PERMISSION_DENIED)
