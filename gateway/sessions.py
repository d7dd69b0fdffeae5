"""Refresh tokens, kept server-side in Redis, in families.

A login starts a family (random id) and hands out its first refresh token: opaque,
`<family>.<random>` (256 random bits; only its SHA-256 is stored, so a Redis dump
holds no usable token). `/v1/auth/refresh` rotates: the presented token is marked
used and a new one of the same family is returned. A used token presented again
means two parties hold the family (a stolen token, or a stolen one's owner after
the thief refreshed): the whole family is revoked, and the access tokens issued with
it stop working at once (their `fam` claim is checked on every request, see
admission.py). Logout and a phone merge revoke a family the same way.

Keys (prefix pond:gateway:): `rf:<family>` (member, revoked) and `rt:<sha256>`
(family, used), both expiring with POND_REFRESH_TOKEN_TTL_SECONDS (renewed on each
rotation); every change is one Lua script, so two refreshes racing cannot both win."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from services.runtime.redis_scripts import ScriptRegistry

_ISSUE_LUA = """
redis.call('HSET', KEYS[1], 'member', ARGV[1], 'revoked', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'family', ARGV[2], 'used', '0')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""
# KEYS: family, presented token, new token. ARGV: family id, ttl ms.
_ROTATE_LUA = """
local member = redis.call('HGET', KEYS[1], 'member')
if not member then return {'unknown'} end
if redis.call('HGET', KEYS[1], 'revoked') ~= '0' then return {'revoked'} end
local token = redis.call('HMGET', KEYS[2], 'family', 'used')
if not token[1] or token[1] ~= ARGV[1] then return {'unknown'} end
if token[2] ~= '0' then
  redis.call('HSET', KEYS[1], 'revoked', '1')
  return {'reused'}
end
redis.call('HSET', KEYS[2], 'used', '1')
redis.call('HSET', KEYS[3], 'family', ARGV[1], 'used', '0')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok', member}
"""
_REVOKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'revoked', '1') end
return 1
"""


@dataclass(frozen=True, slots=True)
class Rotated:
    outcome: str  # ok, unknown, revoked, reused
    member_id: str = ""
    family: str = ""
    refresh_token: str = ""


def family_key(family: str) -> str:
    return f"rf:{family}"


def _token_key(token: str) -> str:
    return "rt:" + hashlib.sha256(token.encode()).hexdigest()


def _new_token(family: str) -> str:
    return f"{family}.{secrets.token_urlsafe(32)}"


class RefreshSessions:
    def __init__(self, scripts: ScriptRegistry, *, ttl_seconds: int) -> None:
        self.ttl_ms = ttl_seconds * 1000
        self._issue = scripts.register("refresh_issue", _ISSUE_LUA)
        self._rotate = scripts.register("refresh_rotate", _ROTATE_LUA)
        self._revoke = scripts.register("refresh_revoke", _REVOKE_LUA)

    async def start(self, member_id: str) -> tuple[str, str]:
        """A new family for `member_id`: (family id, its first refresh token)."""
        family = secrets.token_urlsafe(12).replace(".", "_")
        token = _new_token(family)
        await self._issue(keys=[family_key(family), _token_key(token)],
                          args=[member_id, family, self.ttl_ms])
        return family, token

    async def rotate(self, token: str) -> Rotated:
        family, dot, rest = token.partition(".")
        if not dot or not family or not rest or len(token) > 200:
            return Rotated("unknown")
        new = _new_token(family)
        reply = await self._rotate(keys=[family_key(family), _token_key(token), _token_key(new)],
                                   args=[family, self.ttl_ms])
        outcome = _text(reply[0])
        if outcome != "ok":
            return Rotated(outcome)
        return Rotated("ok", _text(reply[1]), family, new)

    async def revoke(self, family: str) -> None:
        if family:
            await self._revoke(keys=[family_key(family)])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
