"""A customer's journey the way the mini-program and the store drive the stack: the
POS registers the customer by phone and records a purchase over gRPC; later the
customer opens the mini-program (WeChat login: a new member), binds the phone
WeChat verified, and the two memberships become one: the store history is visible,
the tokens name the survivor, the old session is over, and signing in again lands
on the survivor."""

from __future__ import annotations

from pond.member.v1 import member_pb2 as pb

from services.runtime.auth import Role
from tests.conftest import MemberHarness
from tests.gateway_harness import GatewayHarness, bearer
from tests.integration.test_gateway_auth import assert_problem
from tests.integration.test_gateway_me import pos_order

PHONE = "13812345678"


async def test_a_pos_customer_opens_the_mini_program_and_binds_the_phone(
    gateway: GatewayHarness, member: MemberHarness
):
    # At the store: registered by phone, a purchase of 1500 yuan (Silver).
    at_pos = await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=PHONE)], store_id="s1",
        acquisition_channel=4), metadata=member.md(Role.GUIDE))
    pos_id = at_pos.member.id
    await pos_order(member, pos_id, "pos-order-1", 150_000)

    # In the mini-program: a new member, nothing yet.
    signed_in = await gateway.login("mei")
    assert signed_in["created"] is True and signed_in["member_id"] != pos_id
    old_access, old_refresh = signed_in["access_token"], signed_in["refresh_token"]
    assert (await gateway.get("/v1/me", old_access)).json()["points_balance"] == 0

    reply = await gateway.http.post("/v1/me/phone", headers=bearer(old_access),
                                    json={"code": f"phone-{PHONE}"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["merged"] is True
    assert body["me"]["id"] == pos_id and body["tokens"]["member_id"] == pos_id
    assert body["me"]["phone"] == "138****5678" and PHONE not in reply.text

    # One member: the store's, with its history, reachable with the new tokens only.
    token = body["tokens"]["access_token"]
    me = (await gateway.get("/v1/me", token)).json()
    assert me["id"] == pos_id and me["points_balance"] == 1500
    assert me["tier"]["level"] == 1 and me["store_id"] == "s1"
    orders = (await gateway.get("/v1/me/orders", token)).json()["orders"]
    assert [o["id"] for o in orders] == ["pos-order-1"]
    assert (await gateway.get("/v1/me/orders/pos-order-1", token)).status_code == 200
    assert_problem(await gateway.get("/v1/me", old_access), 401, "SESSION_REVOKED")
    refreshed = await gateway.http.post("/v1/auth/refresh", json={"refresh_token": old_refresh})
    assert refreshed.status_code == 401
    rotated = await gateway.http.post("/v1/auth/refresh",
                                      json={"refresh_token": body["tokens"]["refresh_token"]})
    assert rotated.status_code == 200 and rotated.json()["member_id"] == pos_id

    # The merged-away member is closed, pointing at the survivor.
    gone = await member.stub.GetMember(pb.GetMemberRequest(member_id=signed_in["member_id"]),
                                       metadata=member.md())
    assert gone.merged_into == pos_id

    # Next time: WeChat login finds the survivor (the openid moved with the merge).
    again = await gateway.login("mei")
    assert again["member_id"] == pos_id and again["created"] is False
    # A new order at the store shows at once.
    await pos_order(member, pos_id, "pos-order-2", 400_000)
    me = (await gateway.get("/v1/me", again["access_token"])).json()
    assert me["points_balance"] == 1500 + 4400  # earned at Silver: 1.1 points a yuan
    assert me["tier"]["level"] == 2  # 5500 growth: Gold


async def test_a_session_of_the_merged_member_on_another_phone_must_sign_in_again(
    gateway: GatewayHarness, member: MemberHarness
):
    await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=PHONE)]),
        metadata=member.md(Role.GUIDE))
    phone_a, phone_b = await gateway.login("lin"), await gateway.login("lin")
    merged = await gateway.http.post("/v1/me/phone", headers=bearer(phone_a["access_token"]),
                                     json={"code": f"phone-{PHONE}"})
    assert merged.json()["merged"] is True
    # The other device's session names a member that is gone: reads and writes alike.
    old = bearer(phone_b["access_token"])
    assert_problem(await gateway.get("/v1/me", phone_b["access_token"]), 401, "MEMBER_MERGED")
    assert_problem(await gateway.http.patch("/v1/me", headers=old, json={"nickname": "x"}),
                   401, "MEMBER_MERGED")
    assert_problem(await gateway.http.post("/v1/me/phone", headers=old,
                                           json={"code": "phone-13900000009"}),
                   401, "MEMBER_MERGED")
    again = await gateway.login("lin")
    assert again["member_id"] == merged.json()["me"]["id"]
