"""The community service's groups and membership over a real grpc.aio server: create,
get, list, update, archive (and a flash group archived at its end time by a timer);
join, duplicate join, leave, removal, history, the POS's "in any group", entry rules
checked against a real member service, capacity, and the events announced."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from pond.community.v1 import community_pb2 as pb

from services.community.api import AUTH_RULES
from services.community.server import SERVICE
from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    FLASH,
    VIP,
    Community,
    community_fixture,
    fails,
    published,
)

INVALID, NOT_FOUND, FAILED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                              grpc.StatusCode.FAILED_PRECONDITION)


def test_every_method_has_an_auth_rule():
    assert set(AUTH_RULES) == {m.name for m in SERVICE.methods}


async def test_create_get_and_defaults(community: Community):
    c = community
    g = await c.group("fruit-1", store_id="s1", city="Shenzhen", owner_guide_id="guide-7",
                      wecom_chat_id="wrOgAAA", qr_code_url="https://qr/1")
    assert (g.id, g.capacity, g.level, g.state, g.member_count) == (
        "fruit-1", 200, pb.GROUP_LEVEL_FIRST, pb.GROUP_STATE_ACTIVE, 0)
    got = await c.stub.GetGroup(pb.GetGroupRequest(group_id="fruit-1"), metadata=c.md())
    assert got == g
    made = await c.group(name="no id")
    assert made.id.startswith("g")
    await fails(c.stub.GetGroup(pb.GetGroupRequest(group_id="nope"), metadata=c.md()),
                NOT_FOUND, "GROUP_NOT_FOUND")
    await fails(c.group("fruit-1"), grpc.StatusCode.ALREADY_EXISTS, "GROUP_EXISTS")


async def test_bad_groups_are_refused_with_field_violations(community: Community):
    c = community
    violations = await fails(c.group("big", capacity=501), INVALID)
    assert [f for f, _ in violations] == ["group.capacity"]
    assert (await c.group("max", capacity=500)).capacity == 500
    violations = await fails(c.group("x", name="", kind=0), INVALID)
    assert {f for f, _ in violations} == {"group.name", "group.kind"}
    violations = await fails(c.group("flash", kind=FLASH), INVALID)
    assert [f for f, _ in violations] == ["group.end_time"]
    violations = await fails(c.group("past", kind=FLASH, end_time=c.ts(hours=-1)), INVALID)
    assert [f for f, _ in violations] == ["group.end_time"]
    await fails(c.group("bad:id"), INVALID)
    await fails(c.group("pooled", pool_id="no-such-rule"), FAILED, "RULE_NOT_FOUND")
    listed = await c.stub.ListGroups(pb.ListGroupsRequest(), metadata=c.md())
    assert [g.id for g in listed.groups] == ["max"]  # nothing half-written


async def test_list_filters_and_pages(community: Community):
    c = community
    for i in range(5):
        await c.group(f"g{i}", store_id="s1" if i % 2 else "s2", kind=VIP if i < 2 else 1)
    page = await c.stub.ListGroups(pb.ListGroupsRequest(page_size=2), metadata=c.md())
    assert [g.id for g in page.groups] == ["g0", "g1"] and page.next_page_token
    rest = await c.stub.ListGroups(pb.ListGroupsRequest(page_size=10,
                                                        page_token=page.next_page_token),
                                   metadata=c.md())
    assert [g.id for g in rest.groups] == ["g2", "g3", "g4"] and not rest.next_page_token
    s1 = await c.stub.ListGroups(pb.ListGroupsRequest(store_id="s1"), metadata=c.md())
    assert [g.id for g in s1.groups] == ["g1", "g3"]
    vip = await c.stub.ListGroups(pb.ListGroupsRequest(kind=VIP, store_id="s2"), metadata=c.md())
    assert [g.id for g in vip.groups] == ["g0"]
    await fails(c.stub.ListGroups(pb.ListGroupsRequest(store_id="s1",
                                                       page_token=page.next_page_token),
                                  metadata=c.md()), INVALID)


async def test_update_with_a_mask_and_archive(community: Community):
    c = community
    await c.group("g", capacity=2)

    async def update(paths, **fields):
        return await c.stub.UpdateGroup(pb.UpdateGroupRequest(
            group_id="g", group=pb.Group(**fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths)), metadata=c.md())

    g = await update(["name", "capacity"], name="Renamed", capacity=300, city="ignored")
    assert (g.name, g.capacity, g.city) == ("Renamed", 300, "")
    await fails(update(["capacity"], capacity=501), INVALID)
    await fails(update(["member_count"], member_count=3), INVALID)
    await fails(update([]), INVALID)
    await c.join("g", "m1")
    await c.join("g", "m2")
    await update(["capacity"], capacity=2)
    await fails(update(["capacity"], capacity=1), FAILED, "CAPACITY_BELOW_MEMBERS")
    archived = await c.stub.ArchiveGroup(pb.ArchiveGroupRequest(group_id="g"), metadata=c.md())
    assert archived.state == pb.GROUP_STATE_ARCHIVED and archived.archive_reason == "archived"
    again = await c.stub.ArchiveGroup(pb.ArchiveGroupRequest(group_id="g"), metadata=c.md())
    assert again.state == pb.GROUP_STATE_ARCHIVED
    await fails(c.join("g", "m3"), FAILED, "GROUP_ARCHIVED")
    await fails(update(["name"], name="x"), FAILED, "GROUP_ARCHIVED")
    await fails(c.stub.ArchiveGroup(pb.ArchiveGroupRequest(group_id="nope"), metadata=c.md()),
                NOT_FOUND)


async def test_a_flash_group_is_archived_at_its_end_time(community: Community, redis):
    c = community
    g = await c.group("flash-618", kind=FLASH, end_time=c.ts(hours=2))
    c.clock.advance(hours=1)
    c.wake()
    assert (await c.stub.GetGroup(pb.GetGroupRequest(group_id=g.id),
                                  metadata=c.md())).state == pb.GROUP_STATE_ACTIVE
    c.clock.advance(hours=1, seconds=1)
    c.wake()

    async def state():
        return await c.stub.GetGroup(pb.GetGroupRequest(group_id=g.id), metadata=c.md())

    ended = await eventually(state, lambda grp: grp.state == pb.GROUP_STATE_ARCHIVED)
    assert ended.archive_reason == "ended"
    events = await eventually(lambda: published(redis), lambda e: len(e) >= 1)
    assert events[-1][0] == "GroupArchived" and events[-1][1].reason == "ended"


async def test_join_leave_remove_history_and_the_pos_question(community: Community, redis):
    c = community

    async def in_any(member_id):
        return await c.stub.IsMemberInAnyGroup(pb.IsMemberInAnyGroupRequest(member_id=member_id),
                                               metadata=c.md(Role.GUIDE))

    assert not (await in_any("m1")).in_group
    await c.group("a")
    await c.group("b")
    first = await c.join("a", "m1")
    assert first.first_join and not first.already_member and first.group.member_count == 1
    again = await c.join("a", "m1")
    assert again.already_member and not again.first_join and again.group.member_count == 1
    second = await c.join("b", "m1")
    assert not second.first_join
    pos = await in_any("m1")
    assert (pos.in_group, pos.group_count, pos.ever_joined) == (True, 2, True)
    left = await c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id="a", member_id="m1"),
                                   metadata=c.md())
    assert left.state == pb.MEMBERSHIP_STATE_LEFT
    await fails(c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id="a", member_id="m1"),
                                  metadata=c.md()), FAILED, "NOT_IN_GROUP")
    removed = await c.stub.RemoveFromGroup(pb.RemoveFromGroupRequest(
        group_id="b", member_id="m1", reason="spam"), metadata=c.md(Role.GUIDE))
    assert (removed.state, removed.removed_by, removed.reason) == (
        pb.MEMBERSHIP_STATE_REMOVED, "tester", "spam")
    pos = await in_any("m1")
    assert (pos.in_group, pos.group_count, pos.ever_joined) == (False, 0, True)
    rejoined = await c.join("a", "m1")
    assert rejoined.membership.join_count == 2 and not rejoined.first_join
    await c.join("a", "m2")

    async def members(group_id, past=False):
        resp = await c.stub.ListGroupMembers(pb.ListGroupMembersRequest(
            group_id=group_id, include_past=past), metadata=c.md())
        return [(m.member_id, m.state) for m in resp.memberships]

    assert await members("a") == [("m1", 1), ("m2", 1)]
    assert await members("b") == []
    assert await members("b", past=True) == [("m1", pb.MEMBERSHIP_STATE_REMOVED)]
    await fails(c.stub.ListGroupMembers(pb.ListGroupMembersRequest(group_id="zz"),
                                        metadata=c.md()), NOT_FOUND)
    mine = await c.stub.ListMemberGroups(pb.ListMemberGroupsRequest(
        member_id="m1", include_past=True), metadata=c.md())
    assert [(m.group_id, m.state) for m in mine.memberships] == [
        ("a", pb.MEMBERSHIP_STATE_ACTIVE), ("b", pb.MEMBERSHIP_STATE_REMOVED)]
    await fails(c.join("nope", "m1"), NOT_FOUND, "GROUP_NOT_FOUND")

    events = await eventually(lambda: published(redis), lambda e: len(e) >= 6)
    kinds = [name for name, _ in events]
    assert kinds.count("MemberJoinedGroup") == 4 and kinds.count("MemberLeftGroup") == 2
    firsts = [(p.member_id, p.group_id) for n, p in events
              if n == "MemberJoinedGroup" and p.first_join]
    assert sorted(firsts) == [("m1", "a"), ("m2", "a")]  # each member's first join only
    removal = [p for n, p in events if n == "MemberLeftGroup" and p.removed]
    assert [(p.group_id, p.removed_by) for p in removal] == [("b", "tester")]


async def test_capacity_is_never_exceeded(community: Community):
    c = community
    await c.group("tiny", capacity=2)
    await c.join("tiny", "m1")
    await c.join("tiny", "m2")
    await fails(c.join("tiny", "m3"), FAILED, "GROUP_FULL")
    await c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id="tiny", member_id="m1"),
                            metadata=c.md())
    assert (await c.join("tiny", "m3")).group.member_count == 2


async def test_entry_rules_ask_the_member_service(community: Community):
    c = community
    buyer_only = pb.EntryRules(must_have_bought=True)
    await c.group("buyers", entry_rules=buyer_only)
    await c.group("top", entry_rules=pb.EntryRules(min_tier_level=4))
    await c.group("paid", entry_rules=pb.EntryRules(entry_fee_fen=990))
    m = await c.register("13800001111")
    await fails(c.join("buyers", m), FAILED, "ENTRY_PURCHASE_REQUIRED")
    await c.buy(m, "o-1")
    assert (await c.join("buyers", m)).membership.state == pb.MEMBERSHIP_STATE_ACTIVE
    await fails(c.join("top", m), FAILED, "ENTRY_TIER_TOO_LOW")
    await fails(c.join("paid", m), FAILED, "ENTRY_FEE_REQUIRED")
    assert (await c.join("paid", m, entry_payment_id="pay-1")).group.member_count == 1
    await fails(c.join("buyers", "m-unknown"), FAILED, "MEMBER_NOT_FOUND")


async def test_the_gateway_acts_only_for_its_member(community: Community):
    c = community
    await c.group("a")
    await fails(c.stub.JoinGroup(pb.JoinGroupRequest(group_id="a", member_id="m2"),
                                 metadata=c.md(Role.GATEWAY, "m1")),
                grpc.StatusCode.PERMISSION_DENIED)
    joined = await c.stub.JoinGroup(pb.JoinGroupRequest(group_id="a", member_id="m1"),
                                    metadata=c.md(Role.GATEWAY, "m1"))
    assert joined.first_join
    await fails(c.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(name="x", kind=1)),
                                   metadata=c.md(Role.GATEWAY, "m1")),
                grpc.StatusCode.PERMISSION_DENIED)
    await fails(c.stub.ListGroupMembers(pb.ListGroupMembersRequest(group_id="a"),
                                        metadata=c.md(Role.GATEWAY, "m1")),
                grpc.StatusCode.PERMISSION_DENIED)


async def test_a_merged_members_groups_move_to_the_surviving_member(community: Community, redis):
    """MembersMerged on the member stream: m-old's groups become m-new's (one seat where
    both were in), and the POS counters follow."""
    from pond.events.v1 import member_events_pb2 as mev

    from services.runtime.eventbus import make_event, stream_for

    c = community
    for gid in ("a", "b", "c"):
        await c.group(gid)
    await c.join("a", "m-old")
    await c.join("b", "m-old")
    await c.join("b", "m-new")
    await c.join("c", "m-new")
    merged = make_event("member", "m-new", mev.MembersMerged(
        surviving_id="m-new", merged_id="m-old", cause="operator"), c.clock.now())
    for _ in range(2):  # delivered twice: applied once
        await redis.xadd(stream_for("member"), {b"e": merged.SerializeToString()})

    async def groups_of(member_id):
        resp = await c.stub.ListMemberGroups(pb.ListMemberGroupsRequest(member_id=member_id),
                                             metadata=c.md())
        return sorted(m.group_id for m in resp.memberships)

    assert await eventually(lambda: groups_of("m-new"), lambda g: g == ["a", "b", "c"])
    assert await groups_of("m-old") == []
    counts = {g: (await c.stub.GetGroup(pb.GetGroupRequest(group_id=g),
                                        metadata=c.md())).member_count for g in "abc"}
    assert counts == {"a": 1, "b": 1, "c": 1}
    pos = await c.stub.IsMemberInAnyGroup(pb.IsMemberInAnyGroupRequest(member_id="m-new"),
                                          metadata=c.md())
    assert pos.group_count == 3
    old = await c.stub.IsMemberInAnyGroup(pb.IsMemberInAnyGroupRequest(member_id="m-old"),
                                          metadata=c.md())
    assert (old.in_group, old.ever_joined) == (False, True)
