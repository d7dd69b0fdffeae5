"""Admission: one Redis round trip (a Lua script on the gateway's ScriptRegistry) per
request that checks the access token's refresh family is not revoked (logout, reuse,
merge end the tokens at once) and counts the request against the route class's
limits, per member and per client IP (fixed windows; 429 with Retry-After).

POND_RATE_LIMITS: `class=member_limit/ip_limit/window_seconds`, comma separated
(route classes: auth, read, write; a route group may add its own); a limit of 0
turns that counter off. The client IP is the peer, or X-Forwarded-For from a proxy
in POND_FORWARDED_ALLOW_IPS (uvicorn's proxy headers)."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from gateway.auth import CurrentMember, SignedInMember, unauthorized
from gateway.errors import Problem
from gateway.sessions import family_key
from services.runtime.redis_scripts import ScriptRegistry

# KEYS: [refresh family when ARGV[2] == '1'], then one counter per limit.
# ARGV: window ms, '1'/'0', then the limits in the order of the counters.
# Returns -1 when the family is revoked or gone, else the ms to wait (0: admitted).
_ADMIT_LUA = """
local first = 1
if ARGV[2] == '1' then
  if redis.call('HGET', KEYS[1], 'revoked') ~= '0' then return -1 end
  first = 2
end
local wait = 0
for i = first, #KEYS do
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
  if n > tonumber(ARGV[i - first + 3]) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[1])
      ttl = tonumber(ARGV[1])
    end
    if ttl > wait then wait = ttl end
  end
end
return wait
"""


@dataclass(frozen=True, slots=True)
class Limit:
    per_member: int
    per_ip: int
    window_seconds: int


def parse_limits(text: str) -> dict[str, Limit]:
    limits = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, _, spec = part.partition("=")
        member, ip, window = (int(x) for x in spec.split("/"))
        if min(member, ip) < 0 or window <= 0:
            raise ValueError(f"rate limit {part!r}: limits >= 0, window > 0")
        limits[name.strip()] = Limit(member, ip, window)
    return limits


class RateLimiter:
    def __init__(self, scripts: ScriptRegistry, limits: dict[str, Limit]) -> None:
        self.limits = limits
        self._admit = scripts.register("admit", _ADMIT_LUA)

    @classmethod
    def from_settings(cls, scripts: ScriptRegistry, text: str) -> RateLimiter:
        return cls(scripts, parse_limits(text))

    async def admit(self, route_class: str, member: SignedInMember | None, ip: str) -> None:
        limit = self.limits.get(route_class)
        keys: list[str] = []
        args: list[int | str] = [0, "0"]
        if member is not None:
            keys.append(family_key(member.family))
            args[1] = "1"
        if limit is not None:
            args[0] = limit.window_seconds * 1000
            if member is not None and limit.per_member:
                keys.append(f"rl:{route_class}:m:{member.member_id}")
                args.append(limit.per_member)
            if limit.per_ip:
                keys.append(f"rl:{route_class}:ip:{ip}")
                args.append(limit.per_ip)
        if not keys:
            return
        wait_ms = int(await self._admit(keys=keys, args=args))
        if wait_ms < 0:
            raise unauthorized("session ended (signed out or replaced)", "SESSION_REVOKED")
        if wait_ms > 0:
            raise Problem(429, "RATE_LIMITED", f"too many {route_class} requests",
                          headers={"Retry-After": str(max(1, math.ceil(wait_ms / 1000)))})


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@functools.cache
def admitted(route_class: str) -> Callable[..., Awaitable[None]]:
    """A dependency: the route's class limits, per IP only (before sign-in)."""

    async def dependency(request: Request) -> None:
        await request.app.state.gateway.limiter.admit(route_class, None, client_ip(request))

    return dependency


@functools.cache
def signed_in(route_class: str) -> Callable[..., Awaitable[SignedInMember]]:
    """A dependency: the member of the request's access token, admitted (family not
    revoked, within the class's limits for the member and the IP). One function per
    class, so that a route and its other dependencies (the Idempotency-Key's) share
    it and FastAPI admits the request once."""

    async def dependency(request: Request, member: CurrentMember) -> SignedInMember:
        await request.app.state.gateway.limiter.admit(route_class, member, client_ip(request))
        return member

    return dependency
