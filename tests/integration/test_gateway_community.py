"""The gateway's community routes over real servers: a gateway (uvicorn, free port)
over a real member service, a real community service and real Redis. Groups, rules
and chains are made the way a guide or operator makes them, over gRPC; the customer
side goes through HTTP as the signed-in member only."""

from __future__ import annotations

import uuid

import pytest
from pond.community.v1 import community_pb2 as pb

from tests.gateway_harness import GatewayHarness, bearer
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    community_fixture,
)
from tests.integration.test_gateway_auth import assert_problem

TEMPLATE = pb.GroupTemplate(name_prefix="Fruit club", kind=pb.GROUP_KIND_STORE,
                            level=pb.GROUP_LEVEL_FIRST, capacity=2, store_id="s1",
                            qr_code_url="https://qr.example/fruit-{sequence}")


@pytest.fixture
async def gw(gateway_factory, community: Community) -> GatewayHarness:
    return await gateway_factory(community_target=f"127.0.0.1:{community.service.port}")


async def signed_in(gw: GatewayHarness, name: str) -> tuple[str, dict[str, str]]:
    tokens = await gw.login(name)
    return tokens["member_id"], bearer(tokens["access_token"])


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def open_chain(c: Community, group_id: str, chain_id: str, **kw) -> pb.Chain:
    kw.setdefault("stock", 5)
    kw.setdefault("per_member_limit", 3)
    return await c.stub.OpenChain(pb.OpenChainRequest(
        chain_id=chain_id, group_id=group_id, product="Cherries 1kg", price_fen=1250,
        deadline=c.ts(hours=2), **kw), metadata=c.md())


async def test_my_groups_name_kind_level_and_qr_code(gw: GatewayHarness, community: Community):
    a, a_headers = await signed_in(gw, "alice")
    _, b_headers = await signed_in(gw, "bob")
    await community.group("vip-1", name="VIP lounge", kind=pb.GROUP_KIND_VIP,
                          level=pb.GROUP_LEVEL_SECOND, city="Shenzhen",
                          qr_code_url="https://qr.example/vip-1")
    await community.group("fans-1", name="Fans", kind=pb.GROUP_KIND_FANS)
    await community.join("vip-1", a)
    await community.join("fans-1", a)

    reply = await gw.http.get("/v1/me/groups", headers=a_headers)
    assert reply.status_code == 200, reply.text
    groups = {g["id"]: g for g in reply.json()["groups"]}
    assert set(groups) == {"vip-1", "fans-1"}
    vip = groups["vip-1"]
    assert (vip["name"], vip["kind"], vip["level"], vip["qr_code_url"], vip["city"]) == (
        "VIP lounge", "vip", "second", "https://qr.example/vip-1", "Shenzhen")
    assert vip["member_count"] == 1 and vip["state"] == "active" and vip["joined_at"]

    first = await gw.http.get("/v1/me/groups", params={"page_size": 1}, headers=a_headers)
    page = first.json()
    assert len(page["groups"]) == 1 and page["next_page_token"]
    rest = await gw.http.get("/v1/me/groups", headers=a_headers, params={
        "page_size": 1, "page_token": page["next_page_token"]})
    assert {g["id"] for g in page["groups"] + rest.json()["groups"]} == {"vip-1", "fans-1"}
    # Bob's groups are his own (none), also with Alice's page token.
    assert (await gw.http.get("/v1/me/groups", headers=b_headers)).json()["groups"] == []
    assert_problem(await gw.http.get("/v1/me/groups", headers=b_headers, params={
        "page_size": 1, "page_token": page["next_page_token"]}), 400, "INVALID_ARGUMENT")
    assert_problem(await gw.http.get("/v1/me/groups", headers=a_headers,
                                     params={"page_size": 51}), 400, "INVALID_ARGUMENT")
    assert_problem(await gw.http.get("/v1/me/groups"), 401, "UNAUTHENTICATED")


async def test_a_live_code_joins_the_group_with_room_and_a_second_scan_the_same(
        gw: GatewayHarness, community: Community):
    await community.rule("fruit", template=TEMPLATE)
    a, a_headers = await signed_in(gw, "alice")
    _, b_headers = await signed_in(gw, "bob")
    _, c_headers = await signed_in(gw, "carol")

    first = await gw.http.post("/v1/live-codes/fruit/join", headers=a_headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["group"]["id"] == "fruit-1" and body["group"]["name"] == "Fruit club 1"
    assert body["qr_code_url"] == "https://qr.example/fruit-1" == body["group"]["qr_code_url"]
    assert (body["already_member"], body["first_join"]) == (False, True)
    again = (await gw.http.post("/v1/live-codes/fruit/join", headers=a_headers)).json()
    assert again["group"]["id"] == "fruit-1" and again["already_member"] is True

    # The scan's context is taken (store and city), and the pool fills, then overflows.
    second = await gw.http.post("/v1/live-codes/fruit/join", headers=b_headers,
                                json={"store_id": "s1", "city": "Shenzhen"})
    assert second.json()["group"]["id"] == "fruit-1", second.text
    third = await gw.http.post("/v1/live-codes/fruit/join", headers=c_headers, json={})
    assert third.json()["group"]["id"] == "fruit-2", third.text
    mine = (await gw.http.get("/v1/me/groups", headers=a_headers)).json()["groups"]
    assert [g["id"] for g in mine] == ["fruit-1"]
    members = await community.stub.ListGroupMembers(
        pb.ListGroupMembersRequest(group_id="fruit-1"), metadata=community.md())
    assert a in {m.member_id for m in members.memberships}


async def test_live_code_refusals_are_clear_problems(gw: GatewayHarness, community: Community):
    _, headers = await signed_in(gw, "alice")
    assert_problem(await gw.http.post("/v1/live-codes/nope/join", headers=headers),
                   404, "ROUTING_RULE_NOT_FOUND")
    await community.rule("closed")  # no template, no groups: the pool is full
    assert_problem(await gw.http.post("/v1/live-codes/closed/join", headers=headers),
                   409, "POOL_FULL")
    gold = pb.GroupTemplate()
    gold.CopyFrom(TEMPLATE)
    gold.entry_rules.min_tier_level = 5
    await community.rule("gold", template=gold)
    problem = assert_problem(await gw.http.post("/v1/live-codes/gold/join", headers=headers),
                             409, "ENTRY_TIER_TOO_LOW")
    assert problem["detail"]
    for body in ({"member_id": "m-someone"}, {"store_id": "a b"}, {"city": 7}):
        assert_problem(await gw.http.post("/v1/live-codes/gold/join", headers=headers,
                                          json=body), 400, "INVALID_ARGUMENT")
    assert_problem(await gw.http.post("/v1/live-codes/a%20b/join", headers=headers),
                   400, "INVALID_ARGUMENT")
    mine = (await gw.http.get("/v1/me/groups", headers=headers)).json()["groups"]
    assert mine == []  # nothing half-joined


async def test_check_in_once_a_day_and_the_streak(gw: GatewayHarness, community: Community):
    a, headers = await signed_in(gw, "alice")
    _, b_headers = await signed_in(gw, "bob")
    streak = (await gw.http.get("/v1/me/check-in-streak", headers=headers)).json()
    assert streak == {"streak": 0, "best_streak": 0, "total_days": 0, "last_day": None,
                      "checked_in_today": False}

    first = await gw.http.post("/v1/check-ins", headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["already_checked_in"] is False and first.json()["streak"] == 1
    second = await gw.http.post("/v1/check-ins", headers=headers)
    assert second.status_code == 200, second.text
    assert second.json() == {**first.json(), "already_checked_in": True}
    assert first.json()["day"] == "2026-03-01"  # 10:00 in Shanghai

    community.clock.advance(days=1)
    assert (await gw.http.post("/v1/check-ins", headers=headers, json={})).status_code == 201
    streak = (await gw.http.get("/v1/me/check-in-streak", headers=headers)).json()
    assert streak == {"streak": 2, "best_streak": 2, "total_days": 2, "last_day": "2026-03-02",
                      "checked_in_today": True}
    # Bob's streak is his own.
    assert (await gw.http.get("/v1/me/check-in-streak", headers=b_headers)).json()[
        "total_days"] == 0

    # A check-in in a group: I must be in it.
    await community.group("g1")
    assert_problem(await gw.http.post("/v1/check-ins", headers=b_headers,
                                      json={"group_id": "g1"}), 409, "NOT_IN_GROUP")
    await community.join("g1", a)
    community.clock.advance(days=1)
    in_group = await gw.http.post("/v1/check-ins", headers=headers, json={"group_id": "g1"})
    assert in_group.status_code == 201 and in_group.json()["group_id"] == "g1", in_group.text
    assert_problem(await gw.http.post("/v1/check-ins", headers=headers,
                                      json={"member_id": "x"}), 400, "INVALID_ARGUMENT")


async def test_a_chain_join_change_withdraw(gw: GatewayHarness, community: Community):
    a, headers = await signed_in(gw, "alice")
    await community.group("g1")
    await community.join("g1", a)
    chain = await open_chain(community, "g1", "cherries")

    view = (await gw.http.get("/v1/chains/cherries", headers=headers)).json()
    assert view["product"] == "Cherries 1kg" and view["price_fen"] == 1250
    assert (view["stock"], view["stock_left"], view["per_member_limit"]) == (5, 5, 3)
    assert view["deadline"].startswith("2026-03-01T04:00:00") and view["state"] == "open"
    assert view["my_entry"] is None and view["group_id"] == "g1" and view["id"] == chain.id

    no_key = await gw.http.post("/v1/chains/cherries/entries", headers=headers,
                                json={"quantity": 2})
    assert_problem(no_key, 400, "IDEMPOTENCY_KEY_REQUIRED")
    k = key()
    joined = await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **k},
                                json={"quantity": 2})
    assert joined.status_code == 201, joined.text
    entry = joined.json()
    assert (entry["quantity"], entry["amount_fen"], entry["state"], entry["position"]) == (
        2, 2500, "active", 1)
    # A retry after a lost answer: the first entry again, stock taken once.
    replay = await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **k},
                                json={"quantity": 2})
    assert replay.status_code == 201 and replay.json() == entry
    assert (await gw.http.get("/v1/chains/cherries", headers=headers)).json()[
        "stock_left"] == 3
    assert_problem(await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **k},
                                      json={"quantity": 1}), 400, "IDEMPOTENCY_KEY_REUSED")
    assert_problem(await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **key()},
                                      json={"quantity": 1}), 409, "CHAIN_ALREADY_JOINED")

    changed = await gw.http.patch("/v1/chains/cherries/entries/me", headers=headers,
                                  json={"quantity": 3})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["quantity"], changed.json()["amount_fen"]) == (3, 3750)
    assert_problem(await gw.http.patch("/v1/chains/cherries/entries/me", headers=headers,
                                       json={"quantity": 4}), 409, "CHAIN_MEMBER_LIMIT")
    for bad in ({"quantity": 0}, {"quantity": "2"}, {"quantity": 1.5}, {}):
        assert_problem(await gw.http.patch("/v1/chains/cherries/entries/me", headers=headers,
                                           json=bad), 400, "INVALID_ARGUMENT")
    view = (await gw.http.get("/v1/chains/cherries", headers=headers)).json()
    assert view["stock_left"] == 2 and view["my_entry"]["quantity"] == 3

    withdrawn = await gw.http.delete("/v1/chains/cherries/entries/me", headers=headers)
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["state"] == "withdrawn"
    view = (await gw.http.get("/v1/chains/cherries", headers=headers)).json()
    assert view["stock_left"] == 5 and view["my_entry"] is None
    assert_problem(await gw.http.delete("/v1/chains/cherries/entries/me", headers=headers),
                   404, "CHAIN_ENTRY_NOT_FOUND")
    assert_problem(await gw.http.patch("/v1/chains/cherries/entries/me", headers=headers,
                                       json={"quantity": 1}), 404, "CHAIN_ENTRY_NOT_FOUND")
    assert_problem(await gw.http.get("/v1/chains/nope", headers=headers), 404, "CHAIN_NOT_FOUND")


async def test_a_withdraw_replayed_with_its_key_answers_the_first(
        gw: GatewayHarness, community: Community):
    _, headers = await signed_in(gw, "alice")
    await community.group("g1")
    await open_chain(community, "g1", "cherries")
    await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **key()},
                       json={"quantity": 1})
    k = key()
    first = await gw.http.delete("/v1/chains/cherries/entries/me", headers={**headers, **k})
    again = await gw.http.delete("/v1/chains/cherries/entries/me", headers={**headers, **k})
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert_problem(await gw.http.delete("/v1/chains/cherries/entries/me", headers={
        **headers, "Idempotency-Key": "short"}), 400, "INVALID_ARGUMENT")


async def test_stock_the_limit_and_the_deadline_refuse(gw: GatewayHarness, community: Community):
    _, a_headers = await signed_in(gw, "alice")
    _, b_headers = await signed_in(gw, "bob")
    await community.group("g1")
    await open_chain(community, "g1", "cherries", stock=3, per_member_limit=0)
    view = (await gw.http.get("/v1/chains/cherries", headers=a_headers)).json()
    assert view["per_member_limit"] == 3  # 0: up to the stock
    assert (await gw.http.post("/v1/chains/cherries/entries", headers={**a_headers, **key()},
                               json={"quantity": 2})).status_code == 201
    over = assert_problem(await gw.http.post(
        "/v1/chains/cherries/entries", headers={**b_headers, **key()}, json={"quantity": 2}),
        409, "CHAIN_OVER_STOCK")
    assert "1" in over["detail"]
    community.clock.advance(hours=3)
    late = await gw.http.post("/v1/chains/cherries/entries", headers={**b_headers, **key()},
                              json={"quantity": 1})
    assert late.status_code == 409, late.text
    assert late.json()["code"] in ("CHAIN_DEADLINE_PASSED", "CHAIN_CLOSED")  # the timer may win
    assert (await gw.http.get("/v1/chains/cherries", headers=a_headers)).json()[
        "stock_left"] == 1


async def test_members_cannot_reach_each_others_entries(gw: GatewayHarness,
                                                         community: Community):
    a, a_headers = await signed_in(gw, "alice")
    b, b_headers = await signed_in(gw, "bob")
    await community.group("g-alice")
    await community.group("g-bob")
    await community.join("g-alice", a)
    await community.join("g-bob", b)
    await open_chain(community, "g-bob", "bobs-chain")
    same_key = {"Idempotency-Key": "the-same-key-1"}  # two apps may make the same key
    joined_b = await gw.http.post("/v1/chains/bobs-chain/entries", headers={
        **b_headers, **same_key}, json={"quantity": 2})
    assert joined_b.status_code == 201, joined_b.text

    # Another group's chain: Alice sees the chain's details, never Bob's entry.
    seen = (await gw.http.get("/v1/chains/bobs-chain", headers=a_headers)).json()
    assert seen["my_entry"] is None and seen["stock_left"] == 3 and "entries" not in seen
    assert b not in (await gw.http.get("/v1/chains/bobs-chain", headers=a_headers)).text
    # Her entry routes name only "me": she withdraws and changes nothing of Bob's.
    assert_problem(await gw.http.delete("/v1/chains/bobs-chain/entries/me", headers=a_headers),
                   404, "CHAIN_ENTRY_NOT_FOUND")
    assert_problem(await gw.http.patch("/v1/chains/bobs-chain/entries/me", headers=a_headers,
                                       json={"quantity": 1}), 404, "CHAIN_ENTRY_NOT_FOUND")
    # Bob's key is no key of hers: her join with it is her own.
    joined_a = await gw.http.post("/v1/chains/bobs-chain/entries", headers={
        **a_headers, **same_key}, json={"quantity": 1})
    assert joined_a.status_code == 201, joined_a.text
    assert joined_a.json()["quantity"] == 1 and joined_a.json()["position"] == 2
    # A member id in the body or the query is refused or ignored, never used.
    assert_problem(await gw.http.patch("/v1/chains/bobs-chain/entries/me", headers=a_headers,
                                       json={"quantity": 1, "member_id": b}),
                   400, "INVALID_ARGUMENT")
    gone = await gw.http.delete("/v1/chains/bobs-chain/entries/me",
                                params={"member_id": b}, headers=a_headers)
    assert gone.status_code == 200 and gone.json()["quantity"] == 1, gone.text

    chain = await community.stub.GetChain(pb.GetChainRequest(chain_id="bobs-chain"),
                                          metadata=community.md())
    assert [(e.member_id, e.quantity) for e in chain.entries] == [(b, 2)]
    bob_view = (await gw.http.get("/v1/chains/bobs-chain", headers=b_headers)).json()
    assert bob_view["my_entry"]["quantity"] == 2 and bob_view["stock_left"] == 3
    # Groups are each one's own.
    assert [g["id"] for g in (await gw.http.get("/v1/me/groups", headers=a_headers)).json()[
        "groups"]] == ["g-alice"]


async def test_readiness_asks_community_only_when_configured(gateway_factory,
                                                             community: Community):
    member_only = await gateway_factory()
    ready = await member_only.http.get("/readyz")
    assert ready.status_code == 200 and "community" not in ready.json()["checks"], ready.text
    _, headers = await signed_in(member_only, "alice")
    problem = assert_problem(await member_only.http.get("/v1/me/groups", headers=headers),
                             503, "COMMUNITY_NOT_CONFIGURED")
    assert problem["detail"]

    with_community = await gateway_factory(
        community_target=f"127.0.0.1:{community.service.port}")
    ready = await with_community.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["community"] is True

    unreachable = await gateway_factory(community_target="127.0.0.1:9")
    ready = await unreachable.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"] == {
        "member": True, "redis": True, "community": False}
    _, headers = await signed_in(unreachable, "bob")
    assert_problem(await unreachable.http.post("/v1/check-ins", headers=headers),
                   503, "SERVICE_UNAVAILABLE")


async def test_a_merged_members_other_session_must_sign_in_again(
        gw: GatewayHarness, community: Community):
    """A phone bound on one device merges that member into the store's; the other
    device's session names a member that is gone: no join, check-in or chain entry is
    made under it."""
    from pond.member.v1 import member_pb2 as mpb

    await community.member.stub.RegisterMember(mpb.RegisterMemberRequest(
        identities=[mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13812345678")]),
        metadata=community.member.md())
    await community.rule("fruit", template=TEMPLATE)
    phone_a, phone_b = await gw.login("lin"), await gw.login("lin")
    merged = await gw.http.post("/v1/me/phone", headers=bearer(phone_a["access_token"]),
                                json={"code": "phone-13812345678"})
    assert merged.json()["merged"] is True, merged.text
    old = bearer(phone_b["access_token"])
    for reply in (await gw.http.post("/v1/live-codes/fruit/join", headers=old),
                  await gw.http.post("/v1/check-ins", headers=old),
                  await gw.http.get("/v1/me/groups", headers=old)):
        assert_problem(reply, 401, "MEMBER_MERGED")
    chain = await community.stub.ListGroups(pb.ListGroupsRequest(pool_id="fruit"),
                                            metadata=community.md())
    assert list(chain.groups) == []  # nobody was routed


async def test_a_chain_join_is_one_write_against_the_rate_limit(gateway_factory,
                                                                community: Community):
    """The route's member and its Idempotency-Key both need the signed-in member: the
    request is admitted (and counted) once, not once per dependency."""
    gw = await gateway_factory(community_target=f"127.0.0.1:{community.service.port}",
                               rate_limits="auth=100/100/60,read=100/100/60,write=2/100/60")
    _, headers = await signed_in(gw, "alice")
    await community.group("g1")
    await open_chain(community, "g1", "cherries")
    k = key()
    for _ in range(2):
        reply = await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **k},
                                   json={"quantity": 1})
        assert reply.status_code == 201, reply.text
    assert_problem(await gw.http.post("/v1/chains/cherries/entries", headers={**headers, **k},
                                      json={"quantity": 1}), 429, "RATE_LIMITED")
