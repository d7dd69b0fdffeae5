"""WeChat's server access token (for the phone-number API), shared by every gateway
replica through Redis and renewed before it expires by one holder at a time.

`wx:token` holds `<expires_at>|<token>` (epoch seconds) and lives as long as WeChat
said. A replica reads it; when it is missing or within the refresh margin of its
expiry, the replica that takes `wx:token:lock` (SET NX PX, its own random value,
released by a compare-and-delete script) asks WeChat for a new one (stable_token)
and stores it. The others keep using the old token while it is valid, or wait for
the holder's (bounded) when there is none. WeChat's stable_token gives every caller
the same token until it is renewed, so two holders never invalidate each other's."""

from __future__ import annotations

import asyncio
import secrets
import time

from gateway.errors import Problem
from gateway.wechat import WeChat
from services.runtime.redis_scripts import ScriptRegistry

TOKEN_KEY, LOCK_KEY = "wx:token", "wx:token:lock"
LOCK_MS = 10_000
WAIT_SECONDS = 5.0

_TAKE_LOCK_LUA = "return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0"
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_READ_LUA = "return redis.call('GET', KEYS[1])"
_STORE_LUA = "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"
_FORGET_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class WeChatAccessToken:
    def __init__(self, wechat: WeChat, scripts: ScriptRegistry, margin_seconds: float) -> None:
        self.wechat, self.margin = wechat, margin_seconds
        self._take = scripts.register("wx_token_take_lock", _TAKE_LOCK_LUA)
        self._release = scripts.register("wx_token_release_lock", _RELEASE_LUA)
        self._read = scripts.register("wx_token_read", _READ_LUA)
        self._store = scripts.register("wx_token_store", _STORE_LUA)
        self._forget = scripts.register("wx_token_forget", _FORGET_LUA)
        self.fetches = 0  # renewals this replica made (tests, metrics)

    async def get(self) -> str:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            cached = await self._cached()
            now = time.time()
            if cached is not None and cached[0] - self.margin > now:
                return cached[1]
            holder = secrets.token_hex(8)
            if await self._take(keys=[LOCK_KEY], args=[holder, LOCK_MS]):
                try:
                    # Read again under the lock: a holder that renewed and let go
                    # between our read and our lock left a fresh token.
                    fresh = await self._cached()
                    if fresh is not None and fresh[0] - self.margin > time.time():
                        return fresh[1]
                    return await self._renew()
                finally:
                    await self._release(keys=[LOCK_KEY], args=[holder])
            if cached is not None and cached[0] > now:
                return cached[1]  # still valid; another replica is renewing it
            if time.monotonic() > deadline:
                raise Problem(503, "WECHAT_UNAVAILABLE", "no WeChat access token yet",
                              headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)  # the holder is asking WeChat

    async def invalidate(self, token: str) -> None:
        """WeChat said `token` is no longer valid: drop it (unless already replaced)."""
        raw = await self._read(keys=[TOKEN_KEY])
        if raw is not None and _parsed(raw)[1] == token:
            await self._forget(keys=[TOKEN_KEY], args=[raw])

    async def _cached(self) -> tuple[float, str] | None:
        raw = await self._read(keys=[TOKEN_KEY])
        return None if raw is None else _parsed(raw)

    async def _renew(self) -> str:
        token, expires_in = await self.wechat.stable_access_token()
        self.fetches += 1
        await self._store(keys=[TOKEN_KEY],
                          args=[f"{time.time() + expires_in}|{token}", expires_in * 1000])
        return token


def _parsed(raw: bytes | str) -> tuple[float, str]:
    """(expires_at, token) of a stored `<expires_at>|<token>`."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    at, _, token = text.partition("|")
    return float(at), token
