"""What schemathesis (test_gateway_schemathesis.py) found the gateway doing against
its own document, each pinned down by a plain test: a 405 names every method of the
path, request bodies take only the JSON types the document gives, every answer
carries the documented X-Request-Id, and 429/503 their documented Retry-After."""

from __future__ import annotations

from tests.gateway_harness import GatewayHarness, bearer
from tests.integration.test_gateway_auth import assert_problem


async def test_a_405_allows_every_method_the_path_has(gateway: GatewayHarness):
    tokens = await gateway.login()
    for method in ("OPTIONS", "DELETE", "PUT"):
        reply = await gateway.http.request(method, "/v1/me",
                                           headers=bearer(tokens["access_token"]))
        assert_problem(reply, 405, "METHOD_NOT_ALLOWED")
        assert reply.headers["allow"] == "GET, PATCH"
    reply = await gateway.http.get("/v1/auth/refresh")
    assert_problem(reply, 405, "METHOD_NOT_ALLOWED")
    assert reply.headers["allow"] == "POST"


async def test_body_values_are_taken_only_in_their_documented_json_type(
        gateway: GatewayHarness):
    headers = bearer((await gateway.login())["access_token"])
    refused = [
        {"consents": [{"channel": "sms", "granted": 0}]},
        {"consents": [{"channel": "sms", "granted": "yes"}]},
        {"birthday": 0},
        {"birthday": 86400},
        {"birthday": "86400"},
        {"birthday": "2000-1-1"},
    ]
    for body in refused:
        problem = assert_problem(await gateway.http.patch("/v1/me", json=body, headers=headers),
                                 400, "INVALID_ARGUMENT")
        assert problem["violations"], body
    me = (await gateway.http.get("/v1/me", headers=headers)).json()
    assert me["birthday"] is None and me["consents"] == [], me
    reply = await gateway.http.patch("/v1/me", headers=headers, json={
        "birthday": "2000-01-31", "consents": [{"channel": "sms", "granted": False}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["birthday"] == "2000-01-31"


async def test_every_answer_carries_the_documented_request_id(gateway: GatewayHarness):
    doc = (await gateway.http.get("/openapi.json")).json()
    assert doc["components"]["headers"]["X-Request-Id"]["required"] is True
    for item in doc["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                assert "X-Request-Id" in response["headers"], operation["operationId"]
    tokens = await gateway.login()
    for reply in (await gateway.http.post("/v1/auth/logout",
                                          headers=bearer(tokens["access_token"])),
                  await gateway.http.get("/v1/me"),
                  await gateway.http.get("/healthz")):
        assert reply.headers["x-request-id"], reply


async def test_a_rate_limited_answer_is_documented_with_its_retry_after(gateway_factory):
    gateway = await gateway_factory(rate_limits="auth=1000/1000/60,read=1/1000/60,write=1/1000/60")
    doc = (await gateway.http.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        for operation in item.values():
            if path.startswith("/v1/"):
                for status in ("429", "503"):
                    headers = operation["responses"][status]["headers"]
                    assert "Retry-After" in headers, (operation["operationId"], status)
    assert doc["components"]["headers"]["Retry-After"]["required"] is True
    headers = bearer((await gateway.login())["access_token"])
    assert (await gateway.http.get("/v1/me", headers=headers)).status_code == 200
    limited = await gateway.http.get("/v1/me", headers=headers)
    assert_problem(limited, 429, "RATE_LIMITED")
    assert int(limited.headers["retry-after"]) >= 1
