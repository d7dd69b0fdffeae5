"""What every request to the gateway gets: a request id (taken when sane, made
otherwise, echoed, passed to the services), one problem+json shape for every error
and never a 5xx for bad input, the body size limit, rate limits in Redis, deadlines
on the gRPC calls, CORS, health, metrics and an accurate OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from pond.events.v1 import event_pb2

from services.runtime.request_ids import accepted_request_id
from tests.conftest import eventually
from tests.gateway_harness import GatewayHarness, bearer
from tests.integration.test_gateway_auth import assert_problem

MEMBER_STREAM = "pond.events.member"


async def test_a_sane_request_id_is_echoed_and_reaches_the_services(gateway, redis):
    reply = await gateway.http.post("/v1/auth/wechat-login", json={"code": gateway.code("a")},
                                    headers={"X-Request-Id": "mini-login-42"})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "mini-login-42"

    async def request_ids() -> set[str]:
        entries = await redis.xrange(MEMBER_STREAM)
        return {event_pb2.Event.FromString(fields[b"e"]).request_id for _id, fields in entries}

    await eventually(request_ids, lambda ids: "mini-login-42" in ids)


async def test_an_unacceptable_request_id_is_replaced(gateway: GatewayHarness):
    for offered in ("has spaces", "x" * 65, "138-1234-5678", "ünïcode".encode(), ""):
        reply = await gateway.http.get("/healthz", headers={"X-Request-Id": offered})
        made = reply.headers["x-request-id"]
        assert made != offered and accepted_request_id(made)
    one = await gateway.http.get("/v1/me")
    two = await gateway.http.get("/v1/me")
    assert one.headers["x-request-id"] != two.headers["x-request-id"]
    assert one.json()["request_id"] == one.headers["x-request-id"]


async def test_malformed_bodies_are_400_never_5xx(gateway: GatewayHarness):
    tokens = await gateway.login()
    headers = {**bearer(tokens["access_token"]), "Content-Type": "application/json"}
    bodies = [b"{", b"[]", b"null", b'"text"', b"", b'{"code": 5}', b'{"code": ""}',
              b'{"code": "x", "extra": 1}', b"\xff\xfe", b'{"code": "' + b"x" * 200 + b'"}']
    for body in bodies:
        reply = await gateway.http.post("/v1/auth/wechat-login", content=body, headers=headers)
        assert_problem(reply, 400, "INVALID_ARGUMENT")
    for body in (b'{"birthday": "not a date"}', b'{"consents": "all"}', b'{"nickname": 7}'):
        reply = await gateway.http.patch("/v1/me", content=body, headers=headers)
        body_ = assert_problem(reply, 400, "INVALID_ARGUMENT")
        assert body_["violations"], body_


async def test_unknown_routes_and_methods_are_problems(gateway: GatewayHarness):
    assert_problem(await gateway.http.get("/v1/nothing-here"), 404, "NOT_FOUND")
    assert_problem(await gateway.http.delete("/v1/me"), 405, "METHOD_NOT_ALLOWED")


async def test_a_body_over_the_limit_is_413(gateway_factory):
    gateway = await gateway_factory(max_body_bytes=1024)
    big = {"code": "x", "pad": "y" * 2000}
    assert_problem(await gateway.http.post("/v1/auth/wechat-login", json=big), 413,
                   "BODY_TOO_LARGE")

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield b"y" * 512

    chunked = await gateway.http.post("/v1/auth/wechat-login", content=chunks(),
                                      headers={"Content-Type": "application/json"})
    assert_problem(chunked, 413, "BODY_TOO_LARGE")
    small = await gateway.http.post("/v1/auth/wechat-login", json={"code": gateway.code("a")})
    assert small.status_code == 200


async def test_rate_limits_per_ip_and_per_member(gateway_factory):
    gateway = await gateway_factory(rate_limits="auth=0/3/60,read=2/100/60,write=5/100/60")
    for _ in range(3):
        assert (await gateway.http.post("/v1/auth/wechat-login",
                                        json={"code": gateway.code("a")})).status_code == 200
    limited = await gateway.http.post("/v1/auth/wechat-login", json={"code": gateway.code("a")})
    assert_problem(limited, 429, "RATE_LIMITED")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # Per member: the read class allows two per member; another member is not counted.
    other = await gateway_factory(rate_limits="auth=0/100/60,read=2/100/60,write=5/100/60")
    alice, bob = await other.login("alice"), await other.login("bob")
    for _ in range(2):
        assert (await other.get("/v1/me", alice["access_token"])).status_code == 200
    assert_problem(await other.get("/v1/me", alice["access_token"]), 429, "RATE_LIMITED")
    assert (await other.get("/v1/me", bob["access_token"])).status_code == 200


async def test_a_member_service_that_does_not_answer_is_504_and_a_missing_one_503(
    gateway_factory
):
    async def hold(reader, writer):  # accepts and never speaks: calls hang
        await reader.read()

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        gateway = await gateway_factory(member_target=f"127.0.0.1:{port}",
                                        gateway_deadline_seconds=0.3)
        reply = await gateway.http.get("/v1/tier-program")
        assert_problem(reply, 504, "DEADLINE_EXCEEDED")
        assert "127.0.0.1" not in reply.text
        ready = await gateway.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["member"] is False
    finally:
        silent.close()
        with contextlib.suppress(Exception):
            await silent.wait_closed()
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    gone = await gateway_factory(member_target=f"127.0.0.1:{free}")
    reply = await gone.http.get("/v1/tier-program")
    assert_problem(reply, 503, "SERVICE_UNAVAILABLE")
    assert reply.headers["retry-after"]


async def test_cors_only_for_configured_origins(gateway_factory):
    gateway = await gateway_factory(cors_origins="https://console.example.com")
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    ok = await gateway.http.options("/v1/me", headers={
        "Origin": "https://console.example.com", **preflight})
    assert ok.headers["access-control-allow-origin"] == "https://console.example.com"
    other = await gateway.http.options("/v1/me", headers={"Origin": "https://evil.example",
                                                          **preflight})
    assert "access-control-allow-origin" not in other.headers


async def test_health_readiness_and_metrics(gateway: GatewayHarness):
    assert (await gateway.http.get("/healthz")).json()["status"] == "ok"
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"member": True, "redis": True}}
    await gateway.http.get("/v1/tier-program")
    metrics = (await gateway.http.get("/metrics")).text
    assert 'pond_http_requests_total{code="200",method="GET /v1/tier-program"}' in metrics


async def test_openapi_documents_errors_security_and_no_422(gateway: GatewayHarness):
    doc = (await gateway.http.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "ProblemDetails" in doc["components"]["schemas"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], (path, method)
            assert "default" in op["responses"], (path, method)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) and "get_me" in ids
    me = doc["paths"]["/v1/me"]["get"]
    assert me["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/v1/tier-program"]["get"]
    assert (await gateway.http.get("/docs")).status_code == 200


async def test_the_gateway_runs_on_uvloop_and_httptools_in_production():
    from gateway.server import uvicorn_config
    from gateway.settings import GatewaySettings

    config = uvicorn_config(object(), GatewaySettings())
    assert (config.loop, config.http, config.port) == ("uvloop", "httptools", 8080)
    assert isinstance(httpx.URL("http://x"), httpx.URL)
