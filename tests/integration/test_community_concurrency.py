"""Under 1,000 concurrent calls over a real server: routing into one pool never
exceeds a group's capacity and opens exactly the overflow groups it fills; a chain
never sells more than its stock."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc

from services.community.server import start_community_service
from services.runtime.errors import error_details
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    community_fixture,
    community_settings,
    published,
)

JOINS = 1000


async def test_a_thousand_concurrent_routes_fill_groups_and_open_overflow(community: Community,
                                                                          redis):
    c = community
    await c.rule("flood", template=pb.GroupTemplate(name_prefix="Flood", kind=1, capacity=200,
                                                    owner_guide_id="g1"))
    await c.group("flood-hand", pool_id="flood", capacity=150)  # sequence 1
    routed = await asyncio.gather(*(c.route(f"m{i:04d}", "flood") for i in range(JOINS)))
    per_group = Counter(r.group.id for r in routed)
    # 150 in the hand-made group, then 200 per opened group: 4 opened, the last with 50.
    assert per_group == {"flood-hand": 150, "flood-2": 200, "flood-3": 200, "flood-4": 200,
                         "flood-5": 200, "flood-6": 50}
    assert sum(r.opened_group for r in routed) == 5
    groups = await c.stub.ListGroups(pb.ListGroupsRequest(pool_id="flood"), metadata=c.md())
    assert all(g.member_count <= g.capacity for g in groups.groups)
    assert {g.id: g.member_count for g in groups.groups} == dict(per_group)
    for g in groups.groups:  # the counts are the memberships, nothing counted twice
        members = await c.stub.ListGroupMembers(pb.ListGroupMembersRequest(
            group_id=g.id, page_size=500), metadata=c.md())
        assert len(members.memberships) == g.member_count
    rule = await c.stub.GetRoutingRule(pb.GetRoutingRuleRequest(rule_id="flood"),
                                       metadata=c.md())
    assert (rule.last_sequence, rule.open_groups) == (6, 1)
    events = await eventually(lambda: published(redis),
                              lambda e: sum(n == "MemberJoinedGroup" for n, _ in e) == JOINS)
    assert sorted(p.sequence for n, p in events if n == "GroupOpened") == [2, 3, 4, 5, 6]


async def test_a_thousand_concurrent_chain_joins_never_oversell(community: Community):
    c = community
    await c.group("a")
    await c.stub.OpenChain(pb.OpenChainRequest(
        chain_id="hot", group_id="a", product="Cherries", price_fen=19_900, stock=250,
        per_member_limit=2, deadline=c.ts(hours=1)), metadata=c.md())

    async def join(i: int) -> str:
        try:
            await c.stub.JoinChain(pb.JoinChainRequest(
                chain_id="hot", member_id=f"m{i:04d}", quantity=1 + i % 2,
                idempotency_key=f"k{i}"), metadata=c.md())
        except grpc.aio.AioRpcError as err:
            return error_details(err)[0]
        return "ok"

    outcomes = Counter(await asyncio.gather(*(join(i) for i in range(JOINS))))
    assert set(outcomes) == {"ok", "CHAIN_OVER_STOCK"}
    chain = await c.stub.GetChain(pb.GetChainRequest(chain_id="hot"), metadata=c.md())
    assert chain.sold == sum(e.quantity for e in chain.entries) == 250
    assert len(chain.entries) == outcomes["ok"]
    assert sorted(e.position for e in chain.entries) == list(range(1, outcomes["ok"] + 1))


async def test_two_replicas_routing_into_one_pool_keep_capacity(community: Community, tmp_path,
                                                                redis_url: str):
    """Across replicas nothing takes turns: the store's guards (the group's version,
    the rule's last sequence, the overflow group's id) decide and the losers route
    again."""
    c = community
    await c.rule("two", template=pb.GroupTemplate(name_prefix="Two", kind=1, capacity=50))
    other = await start_community_service(
        community_settings(tmp_path, redis_url, c.member.target), clock=c.clock, port=0,
        metrics=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{other.port}")
    stub = community_pb2_grpc.CommunityServiceStub(channel)
    try:
        async def route(i: int) -> pb.RouteMemberResponse:
            target = stub if i % 2 else c.stub
            return await target.RouteMember(pb.RouteMemberRequest(
                member_id=f"m{i:03d}", rule_id="two"), metadata=c.md())

        routed = await asyncio.gather(*(route(i) for i in range(400)))
    finally:
        await channel.close()
        await other.stop(0)
    assert Counter(r.group.id for r in routed) == {f"two-{n}": 50 for n in range(1, 9)}
    assert sum(r.opened_group for r in routed) == 8
    groups = await c.stub.ListGroups(pb.ListGroupsRequest(pool_id="two"), metadata=c.md())
    assert sorted(g.member_count for g in groups.groups) == [50] * 8


async def test_a_member_scanning_a_code_many_times_at_once_joins_one_group(
        community: Community):
    c = community
    await c.rule("scan", template=pb.GroupTemplate(kind=1, capacity=7))
    routed = await asyncio.gather(*(c.route(f"m{i % 50:02d}", "scan") for i in range(200)))
    groups_of: dict[str, set[str]] = {}
    for r in routed:
        groups_of.setdefault(r.membership.member_id, set()).add(r.group.id)
    assert all(len(g) == 1 for g in groups_of.values()) and len(groups_of) == 50
    assert sum(not r.already_member for r in routed) == 50
    groups = await c.stub.ListGroups(pb.ListGroupsRequest(pool_id="scan"), metadata=c.md())
    assert sum(g.member_count for g in groups.groups) == 50
    assert sorted(g.member_count for g in groups.groups) == [1] + [7] * 7


async def test_scans_of_one_pool_at_once_go_in_batches_each_with_its_own_answer(
        community: Community, redis):
    """Concurrent scans of one live code are routed in batches (one read of the pool
    and one commit for many joins); within a batch each member still gets their own
    answer: a member who has not paid the entry fee is refused alone, a member scanning
    twice joins once, each joiner sees the group as their join left it, and a group
    opened in a batch is announced before its first join."""
    c = community
    template = pb.GroupTemplate(name_prefix="Fee", kind=1, capacity=30)
    template.entry_rules.entry_fee_fen = 990
    await c.rule("fee", template=template)

    async def scan(i: int) -> tuple[str, object]:
        paid = i % 3 != 0
        try:
            return f"m{i % 90:02d}", await c.route(f"m{i % 90:02d}", "fee",
                                                  entry_payment_id=f"pay-{i % 90}" if paid else "")
        except grpc.aio.AioRpcError as err:
            return f"m{i % 90:02d}", error_details(err)[0]

    outcomes = await asyncio.gather(*(scan(i) for i in range(110)))  # m00-m19 twice
    refused = {m for m, o in outcomes if o == "ENTRY_FEE_REQUIRED"}
    routed = [(m, o) for m, o in outcomes if isinstance(o, pb.RouteMemberResponse)]
    # 60 members paid, 13 of them scanned twice; 30 did not (7 of them twice).
    assert len(refused) == 30 and len(routed) == 73
    assert all(int(m[1:]) % 3 == 0 for m in refused)
    group_of = {}
    for m, r in routed:
        assert group_of.setdefault(m, r.group.id) == r.group.id  # twice: the same group
    joins = [r for _, r in routed if not r.already_member]
    assert len(joins) == 60 and len(group_of) == 60
    for gid in ("fee-1", "fee-2"):  # each joiner saw their own count: 1, 2, ... 30
        assert sorted(r.group.member_count for r in joins if r.group.id == gid) == list(
            range(1, 31))
    groups = await c.stub.ListGroups(pb.ListGroupsRequest(pool_id="fee"), metadata=c.md())
    assert {g.id: g.member_count for g in groups.groups} == {"fee-1": 30, "fee-2": 30}
    events = await eventually(lambda: published(redis),
                              lambda e: sum(n == "MemberJoinedGroup" for n, _ in e) == 60)
    order = [(n, p.group_id) for n, p in events if n in ("GroupOpened", "MemberJoinedGroup")]
    for gid in ("fee-1", "fee-2"):
        assert order.index(("GroupOpened", gid)) < order.index(("MemberJoinedGroup", gid))


async def test_a_failing_store_fails_the_waiting_scans_and_the_pool_routes_again(
        community: Community, monkeypatch):
    """The store failing under a batch (a dependency lost mid-flight): every scan
    waiting on it gets an error, nothing is half-written, and the pool is not left
    stuck: the next scans route as usual."""
    c = community
    await c.rule("flaky", template=pb.GroupTemplate(name_prefix="Flaky", kind=1, capacity=10))
    store = c.service.use_cases.routing.store
    commit = store.commit

    async def failing(uow):
        raise OSError("disk I/O error")

    monkeypatch.setattr(store, "commit", failing)
    outcomes = await asyncio.gather(*(c.route(f"m{i:02d}", "flaky") for i in range(40)),
                                    return_exceptions=True)
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    assert {o.code() for o in outcomes} == {grpc.StatusCode.INTERNAL}
    monkeypatch.setattr(store, "commit", commit)
    assert await c.stub.ListGroups(pb.ListGroupsRequest(pool_id="flaky"),
                                   metadata=c.md()) == pb.ListGroupsResponse()
    routed = await asyncio.gather(*(c.route(f"m{i:02d}", "flaky") for i in range(25)))
    assert Counter(r.group.id for r in routed) == {"flaky-1": 10, "flaky-2": 10, "flaky-3": 5}
    assert all(r.first_join for r in routed)


async def test_a_batch_opens_one_group_and_leaves_the_rest_to_the_next(community: Community):
    """Groups of two and 21 scans at once: a batch opens at most one group (the rule's
    numbering moves once per commit), so the scans past its second seat wait for the
    next batch, which opens the next number; every group fills, none is skipped."""
    c = community
    await c.rule("pairs", template=pb.GroupTemplate(name_prefix="Pair", kind=1, capacity=2))
    routed = await asyncio.gather(*(c.route(f"m{i:02d}", "pairs") for i in range(21)))
    assert Counter(r.group.id for r in routed) == {
        **{f"pairs-{n}": 2 for n in range(1, 11)}, "pairs-11": 1}
    assert sorted(r.group.id for r in routed if r.opened_group) == sorted(
        f"pairs-{n}" for n in range(1, 12))
    rule = await c.stub.GetRoutingRule(pb.GetRoutingRuleRequest(rule_id="pairs"),
                                       metadata=c.md())
    assert (rule.last_sequence, rule.open_groups) == (11, 1)


async def test_scans_queued_behind_a_batch_go_in_one_commit(community: Community,
                                                             monkeypatch):
    """The scans that arrive while a pool's batch is being written are routed
    together: 100 scans started at once cost two commits (the first scan's, then one
    for the 99 that queued behind it), not 100. In-process, so that all 99 are queued
    before the first commit returns (over gRPC, arrivals spread with the server's
    load; the gRPC tests above check the answers)."""
    c = community
    await c.rule("queue", template=pb.GroupTemplate(name_prefix="Queue", kind=1, capacity=500))
    routing = c.service.use_cases.routing
    commit, commits = routing.store.commit, []

    async def counted(uow):
        commits.append(uow)
        return await commit(uow)

    monkeypatch.setattr(routing.store, "commit", counted)
    routed = await asyncio.gather(*(routing.route(f"m{i:03d}", "queue", "", "")
                                    for i in range(100)))
    assert len(commits) == 2
    assert [r.joined.group["member_count"] for r in routed] == list(range(1, 101))
    assert sum(r.opened_group for r in routed) == 1


async def test_a_scan_given_up_while_queued_joins_nothing(community: Community):
    """A caller that gives up (its deadline, a closed mini-program) while its scan waits
    for the pool's next batch is left out of it: it joins nothing, and the scans queued
    with it join as usual."""
    c = community
    await c.rule("quit", template=pb.GroupTemplate(name_prefix="Quit", kind=1, capacity=500))
    routing = c.service.use_cases.routing
    tasks = [asyncio.create_task(routing.route(f"m{i:02d}", "quit", "", "")) for i in range(50)]
    await asyncio.sleep(0)  # the first scan is being written; the other 49 are queued
    for task in tasks[10:20]:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[10:20])
    joined = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(joined) == 40
    for i in range(50):
        groups = await c.stub.ListMemberGroups(pb.ListMemberGroupsRequest(
            member_id=f"m{i:02d}"), metadata=c.md())
        assert len(groups.memberships) == (0 if 10 <= i < 20 else 1), i
