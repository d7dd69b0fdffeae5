"""The gateway's small parts that need no server: the Idempotency-Key rule value-moving
POSTs share, the rate-limit setting, problem codes from WeChat's errcodes and from the
services' errors, and the wall that keeps service code out of the gateway."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest

from gateway.app import create_app
from gateway.auth import SignedInMember
from gateway.errors import Problem, from_service_error
from gateway.idempotency import idempotency_key
from gateway.ratelimit import Limit, parse_limits
from gateway.settings import GatewaySettings
from gateway.wechat import WeChatError
from services.runtime.errors import (
    Internal,
    PermissionDenied,
    failed_precondition,
    invalid_argument,
    not_found,
)

ME = SignedInMember("m1", "fam")


async def test_an_unexpected_error_is_a_bare_500_problem_with_the_request_id():
    settings = GatewaySettings(auth_secret="a" * 32, gateway_token_secret="b" * 32)
    app = create_app(settings, gateway=cast(Any, object()))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("db password is hunter2")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        reply = await client.get("/boom", headers={"X-Request-Id": "req-boom-1"})
    assert reply.status_code == 500
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["x-request-id"] == "req-boom-1"
    assert reply.json() == {"type": "https://docs.pond.dev/problems/internal",
                            "title": "Internal Server Error", "status": 500, "code": "INTERNAL",
                            "detail": "internal error", "request_id": "req-boom-1"}


async def test_idempotency_key_is_required_checked_and_scoped_to_the_member():
    assert await idempotency_key(ME, "0b7c9a2e-5d1f-4c55-9a43-2f6a9e1d8c10") == \
        "m1:0b7c9a2e-5d1f-4c55-9a43-2f6a9e1d8c10"
    assert await idempotency_key(SignedInMember("m2", "f"), "same-key-1") != \
        await idempotency_key(ME, "same-key-1")
    for bad in (None, "short", "x" * 65, "has space in it", "semi;colon!", "中文中文中文中文"):
        with pytest.raises(Problem) as refused:
            await idempotency_key(ME, bad)
        assert refused.value.status == 400


def test_rate_limits_setting():
    assert parse_limits("auth=20/60/60, read=0/5/10") == {
        "auth": Limit(20, 60, 60), "read": Limit(0, 5, 10)}
    for bad in ("auth=1/2", "auth=1/2/0", "auth=-1/2/3", "auth=a/b/c"):
        with pytest.raises(ValueError):
            parse_limits(bad)


def test_wechat_errcodes_become_clear_problems():
    expected = {40029: (400, "WECHAT_CODE_INVALID"), 40163: (400, "WECHAT_CODE_USED"),
                45011: (429, "WECHAT_RATE_LIMITED"), 40226: (403, "WECHAT_USER_RISKY"),
                -1: (503, "WECHAT_BUSY"), 12345: (502, "WECHAT_ERROR")}
    for errcode, (status, code) in expected.items():
        problem = WeChatError(errcode, "secret=abc").problem()
        assert (problem.status, problem.code) == (status, code)
        assert "secret" not in problem.detail


def test_service_errors_map_to_statuses_and_leak_nothing_internal():
    cases = [
        (not_found("order", "o1"), 404, "ORDER_NOT_FOUND"),
        (failed_precondition("BIRTHDAY_ALREADY_SET", "set once"), 409, "BIRTHDAY_ALREADY_SET"),
        (failed_precondition("IDEMPOTENCY_KEY_REUSED", "other parameters"), 400,
         "IDEMPOTENCY_KEY_REUSED"),
        (Internal("INTERNAL", "db at 10.0.0.5 failed"), 500, "INTERNAL"),
        (PermissionDenied("PERMISSION_DENIED", "role gateway may not call X"), 500, "INTERNAL"),
    ]
    for error, status, code in cases:
        problem = from_service_error(error)
        assert (problem.status, problem.code) == (status, code)
    assert "10.0.0.5" not in from_service_error(cases[3][0]).detail
    invalid = from_service_error(invalid_argument([("member.profile.birthday", "bad date")]))
    assert invalid.status == 400 and invalid.violations == [("birthday", "bad date")]
