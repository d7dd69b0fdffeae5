"""Leases in Redis: one holder at a time across processes and replicas, lost by a
holder that stops renewing (a killed process) once its time-to-live runs out.

Taking a lease is `SET key token NX PX ttl`; renewing, handing over and releasing
compare the stored token with the holder's own in a Lua script, so a holder whose
lease expired (and was taken by another) can never renew, release or overwrite the
new holder's. Writes that must only happen under the lease check the token in the
same script as the write (fencing: see outbox.py's publish), so a holder that
paused past its expiry cannot write after it lost the lease.

A service's leases live under its key prefix (`pond:<service>:`) and their scripts
are registered once on the service's ScriptRegistry (redis_scripts.py: EVALSHA,
loaded again after a Redis restart), like any other Lua the service runs.
"""

from __future__ import annotations

import os
import socket

from services.runtime.redis_scripts import ScriptRegistry

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms. 1 if renewed, 0 if not ours.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease; ARGV[1] token, ARGV[2] new value ('' deletes), ARGV[3] its ttl ms.
HAND_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


def holder_token(name: str = "") -> str:
    """Who holds a lease, readable in Redis: host, pid and a random part (a restarted
    process with a recycled pid is another holder)."""
    prefix = f"{name}@" if name else ""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class Leases:
    """A service's leases: their scripts, registered once on the service's registry."""

    def __init__(self, scripts: ScriptRegistry) -> None:
        self.scripts = scripts
        self.redis = scripts.redis
        self.renew = scripts.register("lease_renew", RENEW)
        self.hand_over = scripts.register("lease_hand_over", HAND_OVER)

    def lease(self, name: str, ttl_ms: int, token: str | None = None) -> Lease:
        """The lease `name` under the service's prefix (`relay` is pond:<service>:relay)."""
        return Lease(self, name, ttl_ms, token)


class Lease:
    def __init__(
        self, leases: Leases, name: str, ttl_ms: int, token: str | None = None
    ) -> None:
        if ttl_ms < 1:
            raise ValueError("a lease lives at least 1 ms")
        self.leases, self.redis = leases, leases.redis
        self.name, self.ttl_ms = name, ttl_ms
        self.key = leases.scripts.key(name)  # in full, for the plain commands
        self.token = token or holder_token()
        self.held = False

    async def acquire(self) -> bool:
        """Takes the lease if no one holds it (or we do: then it is renewed)."""
        if self.held and await self.renew():
            return True
        self.held = bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    async def renew(self) -> bool:
        self.held = bool(await self.leases.renew(keys=[self.name], args=[self.token, self.ttl_ms]))
        return self.held

    async def release(self) -> bool:
        """Frees the lease at once (if still ours), so another holder need not wait
        for it to expire."""
        return await self.hand_over("", 0)

    async def hand_over(self, value: str, ttl_ms: int) -> bool:
        """Replaces our lease with `value` for `ttl_ms` (a record others read, e.g.
        "done"), if it is still ours."""
        ok = bool(await self.leases.hand_over(keys=[self.name], args=[self.token, value, ttl_ms]))
        self.held = False
        return ok

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
