"""Tagging follows a member merge, through the real event path: the member service's
MembersMerged (from MergeMembers) reaches a real tagging service over Redis. The
merged member's purchase history and manual tags move to the survivor, the merged id
leaves every tag and segment, and neither a restart nor a scoring run brings it back."""

from __future__ import annotations

import grpc
from pond.member.v1 import member_pb2 as mpb
from pond.tagging.v1 import tagging_pb2 as pb

from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration import test_tagging_api as tagging_api
from tests.integration.test_tagging_api import (
    MANUAL,
    RULE,
    SUCCEEDED,
    Stack,
    check,
    create_segment,
    create_tag,
    fails,
    order,
    profile,
    register,
    run_to_end,
    tag_changes,
)

stack = tagging_api.stack  # the fixture: a member and a tagging service on one Redis


async def tag_count(s: Stack, name: str) -> int:
    return (await s.stub.GetTag(pb.GetTagRequest(name=name), metadata=s.md())).member_count


async def test_a_merge_moves_history_and_manual_tags_and_the_merged_member_leaves(
    stack: Stack, redis,
):
    s = stack
    await create_tag(s, "vip", MANUAL)
    await create_tag(s, "one_order", RULE, "orders_total == 1")
    await create_tag(s, "repeat_buyer", RULE, "orders_90d >= 2")
    await create_segment(s, "repeaters", 'has_tag("repeat_buyer")')
    await create_segment(s, "singles", 'has_tag("one_order")')
    a, b = await register(s, 1), await register(s, 2)
    await order(s, a, "o-a", 12_000)
    await order(s, b, "o-b", 15_000)
    for m in (a, b):
        await eventually(lambda m=m: profile(s, m),
                         lambda p: p is not None and p.features["orders_total"] == 1)
    await s.stub.AssignTags(pb.AssignTagsRequest(member_ids=[b], tag_names=["vip"]),
                            metadata=s.md(Role.GUIDE))
    assert await tag_count(s, "one_order") == 2
    assert await check(s, b, "singles") == {"singles": True}

    await s.member.stub.MergeMembers(mpb.MergeMembersRequest(
        surviving_id=a, merged_id=b, reason="same person"), metadata=s.member.md())

    p = await eventually(lambda: profile(s, a), lambda p: p.features["orders_total"] == 2)
    assert p.features["spend_total"] == 27_000
    tags = {t.name: t for t in p.tags}
    assert "repeat_buyer" in tags and "one_order" not in tags
    assert tags["vip"].kind == MANUAL and tags["vip"].source.startswith("manual by ")
    assert await check(s, a, "repeaters", "singles") == {"repeaters": True, "singles": False}
    # The merged member is in no tag or segment and has no profile of its own.
    await fails(s.stub.GetMemberProfile(pb.GetMemberProfileRequest(member_id=b),
                                        metadata=s.md()), grpc.StatusCode.NOT_FOUND,
                "MEMBER_MERGED")
    assert await tag_count(s, "vip") == 1 and await tag_count(s, "one_order") == 0
    seg = await s.stub.GetSegment(pb.GetSegmentRequest(id="singles"), metadata=s.md())
    assert seg.count == 0
    # ...announced like any tag change, and it cannot be tagged by hand any more.
    changes = await eventually(lambda: tag_changes(redis),
                               lambda c: (b, "vip", False, "") in c)
    assert (b, "one_order", False, "") in changes and (a, "vip", True, "") in changes
    await fails(s.stub.AssignTags(pb.AssignTagsRequest(member_ids=[b], tag_names=["vip"]),
                                  metadata=s.md()), grpc.StatusCode.INVALID_ARGUMENT)

    # A restart and a full scoring run keep it so.
    await s.restart()
    run = await run_to_end(s)
    assert run.state == SUCCEEDED
    assert await tag_count(s, "one_order") == 0 and await tag_count(s, "vip") == 1
    assert "vip" in {t.name for t in (await profile(s, a)).tags}
    await fails(s.stub.GetMemberProfile(pb.GetMemberProfileRequest(member_id=b),
                                        metadata=s.md()), grpc.StatusCode.NOT_FOUND,
                "MEMBER_MERGED")
