"""Routing and entry rules that ask a real tagging service (tags through the member's
profile, segments through CheckMembership), over the runtime's service client."""

from __future__ import annotations

import grpc
from pond.community.v1 import community_pb2 as pb
from pond.tagging.v1 import tagging_pb2 as tpb

from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    Pair,
    community_settings,
    fails,
    with_tagging_fixture,
)


async def test_segments_and_tags_come_from_tagging(with_tagging):
    c, tagging = with_tagging
    pet_owner = await c.register("13800004444")
    other = await c.register("13800005555")

    async def profile(member_id):
        try:
            return await tagging.GetMemberProfile(tpb.GetMemberProfileRequest(
                member_id=member_id), metadata=c.md())
        except grpc.aio.AioRpcError:
            return None

    for m in (pet_owner, other):  # tagging has the registrations from the member stream
        await eventually(lambda m=m: profile(m), lambda p: p is not None)
    await tagging.CreateTag(tpb.CreateTagRequest(tag=tpb.Tag(
        name="has_pet", kind=tpb.TAG_KIND_MANUAL)), metadata=c.md())
    await tagging.AssignTags(tpb.AssignTagsRequest(member_ids=[pet_owner],
                                                   tag_names=["has_pet"]), metadata=c.md())
    await tagging.CreateSegment(tpb.CreateSegmentRequest(segment=tpb.Segment(
        id="pets", expression='has_tag("has_pet")')), metadata=c.md())

    await c.group("pet-club", entry_rules=pb.EntryRules(segment_id="pets"))
    assert (await c.join("pet-club", pet_owner)).first_join
    await fails(c.join("pet-club", other), grpc.StatusCode.FAILED_PRECONDITION,
                "ENTRY_SEGMENT_REQUIRED")
    await c.group("ghost", entry_rules=pb.EntryRules(segment_id="no_such_segment"))
    await fails(c.join("ghost", other), grpc.StatusCode.FAILED_PRECONDITION, "SEGMENT_NOT_FOUND")

    template = pb.GroupTemplate(kind=pb.GROUP_KIND_INTEREST)
    await c.rule("by-tag", priority=1, match=pb.RoutingMatch(tags=["has_pet"]),
                 template=template)
    await c.rule("by-segment", priority=2, match=pb.RoutingMatch(segment_ids=["pets"]),
                 template=template)
    await c.rule("rest", priority=3, template=template)
    assert (await c.route(pet_owner, store_id="s1")).rule_id == "by-tag"
    assert (await c.route(other, store_id="s1")).rule_id == "rest"
    await c.stub.DeleteRoutingRule(pb.DeleteRoutingRuleRequest(rule_id="by-tag"),
                                   metadata=c.md())
    await c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id="by-tag-1", member_id=pet_owner),
                            metadata=c.md())
    assert (await c.route(pet_owner, store_id="s1")).rule_id == "by-segment"
