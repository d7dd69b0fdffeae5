"""The customer's routes through the gateway, always as the member in the token:
profile and tier (with what the next tier needs), points, stored value, orders,
paging, the tier programme, profile changes; an order recorded by the POS over gRPC
shows up over HTTP; another member's data is never reachable."""

from __future__ import annotations

import asyncio

from pond.member.v1 import member_pb2 as pb

from services.runtime.auth import Role
from tests.conftest import MemberHarness
from tests.gateway_harness import GatewayHarness, bearer
from tests.integration.test_gateway_auth import assert_problem


async def pos_order(member: MemberHarness, member_id: str, order_id: str, fen: int) -> None:
    """An order recorded at a store's POS (guide token), over gRPC."""
    await member.stub.RecordOrder(pb.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=4, store_id="s1", amount_fen=fen,
        items=[pb.OrderItem(sku="cleanser", category="skincare", quantity=1,
                            unit_price_fen=fen)]), metadata=member.md(Role.GUIDE))


async def test_a_new_member_sees_the_entry_tier_and_what_the_next_needs(gateway: GatewayHarness):
    tokens = await gateway.login()
    me = (await gateway.get("/v1/me", tokens["access_token"])).json()
    assert me["id"] == tokens["member_id"]
    assert me["tier"]["level"] == 0 and me["tier"]["growth_value"] == 0
    assert me["tier"]["next_tier"] == {"level": 1, "name": "银卡 Silver",
                                       "growth_threshold": 1000, "growth_needed": 1000}
    assert me["points_balance"] == 0 and me["stored_value_fen"] == 0 and me["phone"] is None


async def test_a_pos_order_shows_as_points_tier_and_order(
    gateway: GatewayHarness, member: MemberHarness
):
    tokens = await gateway.login()
    token, member_id = tokens["access_token"], tokens["member_id"]
    await pos_order(member, member_id, "pos-1", 120_000)  # 1200 yuan: Silver
    me = (await gateway.get("/v1/me", token)).json()
    assert me["points_balance"] == 1200 and me["paid_order_count"] == 1
    assert me["tier"]["level"] == 1 and me["tier"]["name"] == "银卡 Silver"
    assert me["tier"]["next_tier"]["level"] == 2
    assert me["tier"]["next_tier"]["growth_needed"] == 5000 - 1200
    assert (await gateway.get("/v1/me/points", token)).json() == {"points_balance": 1200}
    entries = (await gateway.get("/v1/me/points/entries", token)).json()
    assert [(e["kind"], e["delta"], e["order_id"]) for e in entries["entries"]] == [
        ("earn", 1200, "pos-1")]
    assert entries["entries"][0]["expires_at"] is not None
    expiring = (await gateway.get("/v1/me/points/expiring", token,
                                  params={"within_days": 366})).json()
    assert expiring["total"] == 1200 and len(expiring["lots"]) == 1
    soon = (await gateway.get("/v1/me/points/expiring", token)).json()
    assert soon == {"within_days": 30, "total": 0, "lots": []}
    orders = (await gateway.get("/v1/me/orders", token)).json()
    assert [o["id"] for o in orders["orders"]] == ["pos-1"]
    one = (await gateway.get("/v1/me/orders/pos-1", token)).json()
    assert one["amount_fen"] == 120_000 and one["points_earned"] == 1200
    assert one["channel"] == "store_pos" and one["items"][0]["sku"] == "cleanser"


async def test_stored_value_balance_and_history(gateway: GatewayHarness, member: MemberHarness):
    tokens = await gateway.login()
    await member.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
        member_id=tokens["member_id"], amount_fen=50_000, bonus_fen=5_000, reference="t1",
        idempotency_key="top-up-1"), metadata=member.md(Role.GUIDE))
    token = tokens["access_token"]
    assert (await gateway.get("/v1/me/stored-value", token)).json() == {
        "stored_value_fen": 55_000}
    page = (await gateway.get("/v1/me/stored-value/entries", token)).json()
    assert [(e["kind"], e["delta_fen"], e["bonus_fen"]) for e in page["entries"]] == [
        ("top_up", 55_000, 5_000)]


async def test_lists_page_with_capped_sizes_and_opaque_tokens(
    gateway: GatewayHarness, member: MemberHarness
):
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    for i in range(3):
        await pos_order(member, alice["member_id"], f"a-{i}", 1000)
    await pos_order(member, bob["member_id"], "b-0", 1000)
    token = alice["access_token"]
    seen, page_token = [], ""
    for _ in range(3):
        page = (await gateway.get("/v1/me/orders", token,
                                  params={"page_size": 2, "page_token": page_token})).json()
        seen += [o["id"] for o in page["orders"]]
        page_token = page["next_page_token"]
        if not page_token:
            break
    assert sorted(seen) == ["a-0", "a-1", "a-2"]
    first = (await gateway.get("/v1/me/orders", token, params={"page_size": 1})).json()
    assert first["next_page_token"]
    for size in (0, 51, -1):
        reply = await gateway.get("/v1/me/orders", token, params={"page_size": size})
        body = assert_problem(reply, 400, "INVALID_ARGUMENT")
        assert body["violations"][0]["field"] == "page_size"
    # Alice's page token in Bob's hands reads nothing of Alice's.
    stolen = await gateway.get("/v1/me/orders", bob["access_token"],
                               params={"page_size": 1, "page_token": first["next_page_token"]})
    assert stolen.status_code == 400, stolen.text
    body = {k: v for k, v in stolen.json().items() if k != "request_id"}  # ids are random
    assert "orders" not in body and not any(o in str(body) for o in ("a-0", "a-1", "a-2"))


async def test_another_members_order_is_not_found(gateway: GatewayHarness, member: MemberHarness):
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    await pos_order(member, alice["member_id"], "alices-order", 5000)
    theirs = await gateway.get("/v1/me/orders/alices-order", bob["access_token"])
    missing = await gateway.get("/v1/me/orders/no-such-order", bob["access_token"])
    for reply in (theirs, missing):
        body = assert_problem(reply, 404, "ORDER_NOT_FOUND")
        assert "alice" not in body["detail"] and alices_id(alice) not in reply.text
    assert (await gateway.get("/v1/me/orders/alices-order", alice["access_token"])).is_success


def alices_id(tokens: dict) -> str:
    return tokens["member_id"]


async def test_no_route_takes_a_member_id_from_the_client(gateway: GatewayHarness):
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    token = alice["access_token"]
    for params in ({"member_id": bob["member_id"]}, {"id": bob["member_id"]}):
        me = (await gateway.get("/v1/me", token, params=params)).json()
        assert me["id"] == alice["member_id"]
    patched = await gateway.http.patch("/v1/me", headers=bearer(token),
                                       json={"id": bob["member_id"]})
    assert_problem(patched, 400, "INVALID_ARGUMENT")


async def test_tier_program_is_public(gateway: GatewayHarness):
    program = (await gateway.http.get("/v1/tier-program")).json()
    assert [t["level"] for t in program["tiers"]] == [0, 1, 2, 3]
    assert program["tiers"][1]["growth_threshold"] == 1000


async def test_patch_consents_per_channel(gateway: GatewayHarness, member: MemberHarness):
    tokens = await gateway.login()
    headers = bearer(tokens["access_token"])
    first = await gateway.http.patch("/v1/me", headers=headers, json={"consents": [
        {"channel": "sms", "granted": True}, {"channel": "wechat", "granted": True}]})
    assert first.status_code == 200, first.text
    decided = {c["channel"]: c["updated_at"] for c in first.json()["consents"]}
    member.clock.advance(days=3)
    second = await gateway.http.patch("/v1/me", headers=headers, json={"consents": [
        {"channel": "sms", "granted": False}]})
    consents = {c["channel"]: c["granted"] for c in second.json()["consents"]}
    assert consents == {"sms": False, "wechat": True}
    # Each channel's time is its own decision's: WeChat's did not change.
    times = {c["channel"]: c["updated_at"] for c in second.json()["consents"]}
    assert times["wechat"] == decided["wechat"] and times["sms"] > decided["sms"]
    bad = await gateway.http.patch("/v1/me", headers=headers, json={"consents": [
        {"channel": "carrier-pigeon", "granted": True}]})
    assert_problem(bad, 400, "INVALID_ARGUMENT")
    # Two changes of different channels at once (two screens of the mini-program):
    # both hold, neither undoes the other.
    await asyncio.gather(*(gateway.http.patch("/v1/me", headers=headers, json={
        "consents": [{"channel": ch, "granted": True}]}) for ch in ("email", "phone_call")))
    final = await gateway.http.get("/v1/me", headers=headers)
    assert {c["channel"]: c["granted"] for c in final.json()["consents"]} == {
        "sms": False, "wechat": True, "email": True, "phone_call": True}


async def test_patch_nickname_and_birthday_once(gateway: GatewayHarness):
    tokens = await gateway.login()
    headers = bearer(tokens["access_token"])
    reply = await gateway.http.patch("/v1/me", headers=headers,
                                     json={"nickname": "小鱼", "birthday": "1990-05-17"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["nickname"] == "小鱼" and reply.json()["birthday"] == "1990-05-17"
    again = await gateway.http.patch("/v1/me", headers=headers, json={"birthday": "1991-01-01"})
    assert_problem(again, 409, "BIRTHDAY_ALREADY_SET")
    me = (await gateway.get("/v1/me", tokens["access_token"])).json()
    assert me["birthday"] == "1990-05-17"
    renamed = await gateway.http.patch("/v1/me", headers=headers, json={"nickname": "大鱼"})
    assert renamed.json()["nickname"] == "大鱼"


async def test_patch_refusals_name_the_clients_fields(gateway: GatewayHarness):
    headers = bearer((await gateway.login())["access_token"])
    for body, field in (({"nickname": "bad\u0000"}, "nickname"),
                        ({"birthday": "9999-12-31"}, "birthday"),
                        ({"birthday": "0001-01-01"}, "birthday")):
        reply = await gateway.http.patch("/v1/me", headers=headers, json=body)
        problem = assert_problem(reply, 400, "INVALID_ARGUMENT")
        assert [v["field"] for v in problem["violations"]] == [field], problem
        assert "member." not in problem["detail"] and "profile." not in problem["detail"]
