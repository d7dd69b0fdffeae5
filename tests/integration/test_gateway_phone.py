"""Binding the phone WeChat verified: the phone-number API through the real adapter
and the stand-in, WeChat's server access token cached in Redis and renewed by one
holder at a time, the member service's BindVerifiedPhone."""

from __future__ import annotations

import asyncio
import types

import httpx

from gateway.routes.phone import verified_phone
from gateway.wechat import WeChat
from gateway.wechat_token import WeChatAccessToken
from services.runtime.redis_scripts import ScriptRegistry
from stack.wechat_standin import WeChatStandIn
from tests.gateway_harness import (
    WECHAT_APP_ID,
    WECHAT_APP_SECRET,
    GatewayHarness,
    bearer,
    standin_server,
)
from tests.integration.test_gateway_auth import assert_problem


async def bind(gateway: GatewayHarness, token: str, code: str) -> httpx.Response:
    return await gateway.http.post("/v1/me/phone", headers=bearer(token), json={"code": code})


async def test_binding_a_new_phone_shows_it_masked(gateway: GatewayHarness):
    tokens = await gateway.login()
    reply = await bind(gateway, tokens["access_token"], "phone-13912345678")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["merged"] is False and body["tokens"] is None
    assert body["me"]["phone"] == "139****5678" and "13912345678" not in reply.text
    me = (await gateway.get("/v1/me", tokens["access_token"])).json()
    assert me["phone"] == "139****5678"


async def test_phone_codes_work_once_and_bad_ones_are_clear(gateway: GatewayHarness):
    tokens = await gateway.login()
    token = tokens["access_token"]
    assert (await bind(gateway, token, "phone-13912345678.1")).status_code == 200
    assert_problem(await bind(gateway, token, "phone-13912345678.1"), 400, "WECHAT_CODE_USED")
    assert_problem(await bind(gateway, token, "not-a-phone-code"), 400, "WECHAT_CODE_INVALID")


async def test_the_server_access_token_is_fetched_once_and_renewed_when_wechat_drops_it(
    gateway: GatewayHarness
):
    alice, bob = await gateway.login("alice"), await gateway.login("bob")
    assert (await bind(gateway, alice["access_token"], "phone-13900000001")).is_success
    assert (await bind(gateway, bob["access_token"], "phone-13900000002")).is_success
    assert gateway.standin.token_requests == 1
    gateway.standin.tokens.clear()  # WeChat no longer knows it (40001)
    carol = await gateway.login("carol")
    assert (await bind(gateway, carol["access_token"], "phone-13900000003")).is_success
    assert gateway.standin.token_requests == 2


async def test_one_holder_renews_the_token_for_every_replica(redis):
    standin = WeChatStandIn(WECHAT_APP_ID, WECHAT_APP_SECRET)
    server = await standin_server(standin).start()
    try:
        async with httpx.AsyncClient() as http:
            wechat = WeChat(http, server.url, WECHAT_APP_ID, WECHAT_APP_SECRET)
            replicas = []
            for _ in range(3):  # three gateway replicas on one Redis
                scripts = ScriptRegistry(redis, "pond:gateway:")
                replicas.append(WeChatAccessToken(wechat, scripts, margin_seconds=300))
            tokens = await asyncio.gather(*(r.get() for r in replicas for _ in range(5)))
            assert len(set(tokens)) == 1
            assert standin.token_requests == 1
            # Within the margin of its expiry: renewed (by one), before it runs out.
            near_end = WeChatAccessToken(wechat, ScriptRegistry(redis, "pond:gateway:"),
                                         margin_seconds=7200)
            await asyncio.gather(near_end.get(), near_end.get())
            assert standin.token_requests == 2
            gateway = types.SimpleNamespace(wechat=wechat, wechat_token=replicas[0])
            phone = await verified_phone(gateway, "phone-13700000000")
            assert phone.pure_phone_number == "13700000000" and phone.country_code == "86"
    finally:
        await server.stop()
