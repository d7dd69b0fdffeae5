"""The gateway as the tests drive it: a real uvicorn on a free port, over a real
member service (the `member` fixture) and real Redis, with the WeChat stand-in on its
own free port; httpx speaks HTTP to it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from gateway.server import EmbeddedServer
from gateway.settings import GatewaySettings
from stack.wechat_standin import WeChatStandIn

GATEWAY_TEST_SECRET = "gateway-test-secret-" + "y" * 20
WECHAT_APP_ID = "wxtest00000000001"
WECHAT_APP_SECRET = "wechat-test-app-secret"
# High enough that only the rate-limit tests, which set their own, meet them.
ROOMY_LIMITS = "auth=1000/1000/60,read=1000/1000/60,write=1000/1000/60"


def standin_server(standin: WeChatStandIn) -> EmbeddedServer:
    return EmbeddedServer(standin.app, uvicorn.Config(
        standin.app, host="127.0.0.1", port=0, loop="none", lifespan="off", log_config=None,
        access_log=False))


def gateway_settings(member_target: str, redis_url: str, wechat_url: str,
                     auth_secret: str, **overrides: Any) -> GatewaySettings:
    env: dict[str, Any] = dict(
        host="127.0.0.1", mode="test", auth_secret=auth_secret,
        gateway_token_secret=GATEWAY_TEST_SECRET, redis_url=redis_url,
        member_target=member_target, wechat_api_base=wechat_url,
        wechat_app_id=WECHAT_APP_ID, wechat_app_secret=WECHAT_APP_SECRET,
        rate_limits=ROOMY_LIMITS, tier_program_cache_seconds=0,
    )
    env.update(overrides)
    return GatewaySettings(**env)


@dataclass
class GatewayHarness:
    server: EmbeddedServer
    standin: WeChatStandIn
    http: httpx.AsyncClient
    settings: GatewaySettings
    _codes: itertools.count = field(default_factory=lambda: itertools.count(1))

    def code(self, name: str) -> str:
        """A fresh stand-in login code for the person `name` (a code works once)."""
        return f"dev-{name}.{next(self._codes)}"

    async def login(self, name: str = "alice") -> dict[str, Any]:
        reply = await self.http.post("/v1/auth/wechat-login", json={"code": self.code(name)})
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def get(self, path: str, token: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, headers=bearer(token), **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
