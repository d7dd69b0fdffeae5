"""Live-code routing over a real grpc.aio server: routing rules (CRUD, priority,
match by store/city/tier), fill strategies, overflow groups opened from the rule's
template and announced, a full pool without a template, entry rules, a second scan
answering the same group."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2
from pond.community.v1 import community_pb2 as pb

from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    community_fixture,
    fails,
    published,
)

FILL_FIRST, BALANCE = pb.FILL_STRATEGY_FILL_FIRST, pb.FILL_STRATEGY_BALANCE
TEMPLATE = pb.GroupTemplate(name_prefix="Fruit club", kind=pb.GROUP_KIND_STORE,
                            owner_guide_id="guide-7", capacity=2, store_id="s1",
                            qr_code_url="https://qr.example/fruit-{sequence}")


async def counts(c: Community, rule_id: str) -> list[tuple[str, int]]:
    resp = await c.stub.ListGroups(pb.ListGroupsRequest(pool_id=rule_id), metadata=c.md())
    return [(g.id, g.member_count) for g in resp.groups]


async def test_rule_crud(community: Community):
    c = community
    rule = await c.rule("r1", priority=5, match=pb.RoutingMatch(store_ids=["s1"]),
                        template=TEMPLATE)
    assert (rule.id, rule.fill_strategy, rule.enabled, rule.last_sequence) == (
        "r1", FILL_FIRST, True, 0)
    assert rule.template.capacity == 2
    got = await c.stub.GetRoutingRule(pb.GetRoutingRuleRequest(rule_id="r1"), metadata=c.md())
    assert got == rule
    await fails(c.rule("r1"), grpc.StatusCode.ALREADY_EXISTS, "RULE_EXISTS")
    violations = await fails(c.rule("r2", template=pb.GroupTemplate(capacity=501, kind=1)),
                             grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in violations] == ["rule.template.capacity"]
    await fails(c.rule("r3", name=""), grpc.StatusCode.INVALID_ARGUMENT)
    updated = await c.stub.UpdateRoutingRule(pb.UpdateRoutingRuleRequest(
        rule_id="r1", rule=pb.RoutingRule(fill_strategy=BALANCE, name="ignored"),
        update_mask=field_mask_pb2.FieldMask(paths=["fill_strategy", "template"])),
        metadata=c.md())
    assert updated.fill_strategy == BALANCE and not updated.HasField("template")
    assert updated.name == "r1"
    await c.rule("r0")
    listed = await c.stub.ListRoutingRules(pb.ListRoutingRulesRequest(), metadata=c.md())
    assert [r.id for r in listed.rules] == ["r0", "r1"]
    await c.stub.DeleteRoutingRule(pb.DeleteRoutingRuleRequest(rule_id="r1"), metadata=c.md())
    await fails(c.stub.GetRoutingRule(pb.GetRoutingRuleRequest(rule_id="r1"), metadata=c.md()),
                grpc.StatusCode.NOT_FOUND, "ROUTING_RULE_NOT_FOUND")
    await fails(c.route("m1", "r1"), grpc.StatusCode.NOT_FOUND, "ROUTING_RULE_NOT_FOUND")
    await fails(c.stub.CreateRoutingRule(pb.CreateRoutingRuleRequest(
        rule=pb.RoutingRule(name="x")), metadata=c.md(Role.GUIDE)),
        grpc.StatusCode.PERMISSION_DENIED)


async def test_a_deleted_rules_id_can_be_given_again_and_its_pool_comes_back(
        community: Community):
    """An operator who deleted a live code's rule and creates it again (the printed QR
    code names the rule) gets the rule back with the groups already opened for it; the
    numbering goes on, so no overflow group's number is used twice."""
    c = community
    await c.rule("again", template=TEMPLATE)
    first = [await c.route(f"a{i}", "again") for i in range(3)]
    assert [r.group.id for r in first] == ["again-1", "again-1", "again-2"]
    await c.stub.DeleteRoutingRule(pb.DeleteRoutingRuleRequest(rule_id="again"),
                                   metadata=c.md())
    revived = await c.rule("again", name="Again", fill_strategy=FILL_FIRST, template=TEMPLATE)
    assert (revived.id, revived.name, revived.last_sequence, revived.enabled) == (
        "again", "Again", 2, True)
    routed = [await c.route(f"b{i}", "again") for i in range(2)]
    assert [r.group.id for r in routed] == ["again-2", "again-3"]
    assert routed[1].opened_group
    await fails(c.rule("again"), grpc.StatusCode.ALREADY_EXISTS, "RULE_EXISTS")


async def test_a_member_who_left_is_routed_into_the_pool_again(community: Community):
    """A member with a past (left) membership in the pool's group scans the live code
    again: a new stint in that group, counted as a second join, not a first."""
    c = community
    await c.rule("back", template=TEMPLATE)
    first = await c.route("m1", "back")
    await c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id=first.group.id, member_id="m1"),
                            metadata=c.md())
    again = await c.route("m1", "back")
    assert again.group.id == first.group.id and not again.already_member
    assert (again.membership.join_count, again.first_join) == (2, False)
    assert (await c.route("m1", "back")).already_member


async def test_a_rule_changed_right_after_a_scan_applies_to_the_next_scan(
        community: Community):
    """Scans keep the rule they read for a moment; a change made through this service
    applies to the very next scan all the same."""
    c = community
    await c.rule("live", template=TEMPLATE)
    await c.route("m1", "live")
    await c.stub.UpdateRoutingRule(pb.UpdateRoutingRuleRequest(
        rule_id="live", rule=pb.RoutingRule(enabled=False),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"])), metadata=c.md())
    await fails(c.route("m2", "live"), grpc.StatusCode.FAILED_PRECONDITION, "RULE_DISABLED")
    await c.stub.DeleteRoutingRule(pb.DeleteRoutingRuleRequest(rule_id="live"),
                                   metadata=c.md())
    await fails(c.route("m2", "live"), grpc.StatusCode.NOT_FOUND, "ROUTING_RULE_NOT_FOUND")


async def test_fill_first_then_overflow_from_the_template(community: Community, redis):
    c = community
    await c.rule("fruit", template=TEMPLATE)
    # A group added by hand into the pool takes its first number.
    await c.group("fruit-1", pool_id="fruit", capacity=3, qr_code_url="https://qr/hand")
    routed = [await c.route(f"m{i}", "fruit") for i in range(7)]
    assert [r.group.id for r in routed] == ["fruit-1"] * 3 + ["fruit-2"] * 2 + ["fruit-3"] * 2
    assert [r.opened_group for r in routed] == [False] * 3 + [True, False, True, False]
    opened = routed[3]
    assert opened.group.name == "Fruit club 2" and opened.group.owner_guide_id == "guide-7"
    assert opened.qr_code_url == "https://qr.example/fruit-2"
    assert routed[0].qr_code_url == "https://qr/hand"
    assert all(r.membership.rule_id == "fruit" and r.rule_id == "fruit" for r in routed)
    again = await c.route("m0", "fruit")  # the same code scanned twice
    assert again.already_member and again.group.id == "fruit-1"
    assert await counts(c, "fruit") == [("fruit-1", 3), ("fruit-2", 2), ("fruit-3", 2)]
    rule = await c.stub.GetRoutingRule(pb.GetRoutingRuleRequest(rule_id="fruit"),
                                       metadata=c.md())
    assert (rule.last_sequence, rule.open_groups) == (3, 0)
    await c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id="fruit-2", member_id="m3"),
                            metadata=c.md())
    assert (await c.route("m9", "fruit")).group.id == "fruit-2"  # room again: no new group
    events = await eventually(lambda: published(redis), lambda e: len(e) >= 11)
    opened_events = [p for n, p in events if n == "GroupOpened"]
    assert [(p.group_id, p.sequence, p.owner_guide_id) for p in opened_events] == [
        ("fruit-2", 2, "guide-7"), ("fruit-3", 3, "guide-7")]


async def test_an_overflow_number_taken_by_a_hand_made_group_is_skipped(community: Community):
    c = community
    await c.rule("r", template=pb.GroupTemplate(kind=1, capacity=1))
    await c.group("r-1")  # not in the pool, but holding the id its first group would get
    routed = await c.route("m1", "r")
    assert (routed.group.id, routed.group.sequence, routed.opened_group) == ("r-2", 2, True)
    assert (await c.route("m2", "r")).group.id == "r-3"


async def test_balance_spreads_members(community: Community):
    c = community
    await c.rule("bal", fill_strategy=BALANCE)
    for i in range(3):
        await c.group(f"bal-{i}", pool_id="bal", capacity=10)
    routed = [(await c.route(f"m{i}", "bal")).group.id for i in range(6)]
    assert sorted(routed) == ["bal-0", "bal-0", "bal-1", "bal-1", "bal-2", "bal-2"]
    assert routed[:3] == ["bal-0", "bal-1", "bal-2"]


async def test_a_full_pool_without_a_template_refuses(community: Community):
    c = community
    await c.rule("closed")
    await fails(c.route("m1", "closed"), grpc.StatusCode.FAILED_PRECONDITION, "POOL_FULL")
    await c.group("only", pool_id="closed", capacity=1)
    await c.route("m1", "closed")
    await fails(c.route("m2", "closed"), grpc.StatusCode.FAILED_PRECONDITION, "POOL_FULL")
    assert await counts(c, "closed") == [("only", 1)]  # nothing half-written


async def test_rules_by_priority_and_context(community: Community):
    c = community
    await c.rule("city", priority=20, match=pb.RoutingMatch(cities=["Shenzhen"]),
                 template=TEMPLATE)
    await c.rule("store", priority=10, match=pb.RoutingMatch(store_ids=["s1"]),
                 template=TEMPLATE)
    await c.rule("anyone", priority=99, template=TEMPLATE)
    assert (await c.route("m1", store_id="s1", city="Shenzhen")).rule_id == "store"
    assert (await c.route("m2", store_id="s2", city="Shenzhen")).rule_id == "city"
    assert (await c.route("m3", store_id="s2", city="Beijing")).rule_id == "anyone"
    await c.stub.UpdateRoutingRule(pb.UpdateRoutingRuleRequest(
        rule_id="anyone", rule=pb.RoutingRule(enabled=False),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"])), metadata=c.md())
    await fails(c.route("m4", store_id="s2", city="Beijing"),
                grpc.StatusCode.FAILED_PRECONDITION, "NO_MATCHING_RULE")
    await fails(c.route("m4", "anyone"), grpc.StatusCode.FAILED_PRECONDITION, "RULE_DISABLED")


async def test_routing_by_the_members_home_and_tier(community: Community):
    c = community
    m = await c.register("13800002222", store_id="s5")
    await c.rule("vip", priority=1, match=pb.RoutingMatch(min_tier_level=4), template=TEMPLATE)
    await c.rule("s4", priority=2, match=pb.RoutingMatch(store_ids=["s4"]), template=TEMPLATE)
    await c.rule("home", priority=3, match=pb.RoutingMatch(store_ids=["s5"]), template=TEMPLATE)
    # No context: the member's own store and tier (below 4) decide.
    assert (await c.route(m)).rule_id == "home"
    await fails(c.route("m-unknown"), grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_NOT_FOUND")


async def test_entry_rules_of_the_pool(community: Community):
    c = community
    template = pb.GroupTemplate()
    template.CopyFrom(TEMPLATE)
    template.entry_rules.must_have_bought = True
    await c.rule("buyers", template=template)
    m = await c.register("13800003333")
    await fails(c.route(m, "buyers"), grpc.StatusCode.FAILED_PRECONDITION,
                "ENTRY_PURCHASE_REQUIRED")
    assert await counts(c, "buyers") == []  # the group it would have opened was not
    await c.buy(m, "o-9")
    routed = await c.route(m, "buyers")
    assert routed.opened_group and routed.first_join


async def test_the_gateway_routes_only_the_member_in_its_token(community: Community):
    """A customer's token scans a live code for themselves, never for someone else;
    the refused scan joins nobody."""
    c = community
    await c.rule("mine", template=TEMPLATE)
    await fails(c.stub.RouteMember(pb.RouteMemberRequest(member_id="m2", rule_id="mine"),
                                   metadata=c.md(Role.GATEWAY, "m1")),
                grpc.StatusCode.PERMISSION_DENIED)
    routed = await c.stub.RouteMember(pb.RouteMemberRequest(member_id="m1", rule_id="mine"),
                                      metadata=c.md(Role.GATEWAY, "m1"))
    assert routed.first_join
    assert await counts(c, "mine") == [(routed.group.id, 1)]
