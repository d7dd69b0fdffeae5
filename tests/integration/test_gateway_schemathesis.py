"""schemathesis against the gateway's own OpenAPI document (as `python -m
gateway.openapi` writes it), one test per operation, each driven as a freshly
signed-in member (a stand-in WeChat login) against a real gateway (uvicorn on a free
port) over a real member service and real Redis.

Every phase schemathesis has for one operation: the document's examples, its coverage
cases (boundaries, missing and wrong-typed values, unexpected methods) and fuzzing,
with data that fits the schema and data that does not. The checks: never a 5xx, every
status code documented, every body in the documented schema and media type, the
documented headers (405's Allow), invalid input refused with a 4xx.

Bounded and deterministic: POND_SCHEMATHESIS_EXAMPLES fuzzed examples per operation
(15 by default), derandomized, no example database.

The services run on their own event loop in a thread: schemathesis calls the API
synchronously (requests), so the test's thread must not be the one serving it."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.openapi import document
from gateway.server import gateway_server
from services.community.server import start_community_service
from services.member.server import start_member_service
from stack.wechat_standin import WeChatStandIn
from tests.conftest import TEST_SECRET, member_settings
from tests.gateway_harness import (
    WECHAT_APP_ID,
    WECHAT_APP_SECRET,
    gateway_settings,
    standin_server,
)
from tests.integration.community_harness import community_settings

EXAMPLES = int(os.environ.get("POND_SCHEMATHESIS_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance,
          negative_data_rejection, allow_header_conformance]
# Roomier than the harness's: hundreds of calls a minute are the point here.
LIMITS = "auth=100000/100000/60,read=100000/100000/60,write=100000/100000/60"

schema = schemathesis.openapi.from_dict(document())


@dataclass
class LiveGateway:
    url: str
    token: str = ""  # the access token of the test running now


_live: LiveGateway | None = None


@schema.auth()
class SignedIn:
    """The running test's access token, through schemathesis's auth, so that a
    negative case leaving the token out on purpose goes without it."""

    def get(self, case: schemathesis.Case, context: Any) -> str:
        return _live.token if _live is not None else "collecting"

    def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module")
def live_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The member and community services, the WeChat stand-in and the gateway on one
    event loop in a thread; yields the gateway's URL."""
    ready: dict[str, Any] = {}
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        member = await start_member_service(
            member_settings(tmp_path_factory.mktemp("member"), redis_url), port=0,
            metrics=False)
        community = await start_community_service(community_settings(
            tmp_path_factory.mktemp("community"), redis_url, f"127.0.0.1:{member.port}"),
            port=0, metrics=False)
        wechat = await standin_server(WeChatStandIn(WECHAT_APP_ID, WECHAT_APP_SECRET)).start()
        gateway = await gateway_server(gateway_settings(
            f"127.0.0.1:{member.port}", redis_url, wechat.url, TEST_SECRET,
            rate_limits=LIMITS, community_target=f"127.0.0.1:{community.port}")).start()
        ready["url"] = gateway.url
        started.set()
        try:
            await stop.wait()
        finally:
            await gateway.stop()
            await wechat.stop()
            await community.stop(0)
            await member.stop(0)

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # start-up failed: the fixture raises it
            ready["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="live-gateway", daemon=True)
    thread.start()
    assert started.wait(60), "the gateway did not start"
    if "error" in ready:
        raise ready["error"]
    try:
        yield ready["url"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@pytest.fixture
def signed_in(live_gateway: str) -> Iterator[LiveGateway]:
    """A new member signed in for this test alone (logout ends only its session)."""
    global _live
    reply = httpx.post(f"{live_gateway}/v1/auth/wechat-login",
                       json={"code": f"dev-schemathesis.{os.urandom(6).hex()}"})
    assert reply.status_code == 200, reply.text
    _live = LiveGateway(live_gateway, reply.json()["access_token"])
    yield _live
    _live = None


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_the_gateway_keeps_its_openapi_promises(case: schemathesis.Case,
                                                 signed_in: LiveGateway) -> None:
    if (case.headers or {}).get("Authorization") == "Bearer collecting":
        case.headers["Authorization"] = f"Bearer {signed_in.token}"  # a case made at collection
    case.call_and_validate(base_url=signed_in.url, checks=CHECKS, timeout=10)
