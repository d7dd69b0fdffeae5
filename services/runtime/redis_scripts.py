"""Lua scripts on Redis, written once: a service registers each script once, with
its key prefix, and calls it by SHA.

    scripts = ScriptRegistry(redis, prefix="pond:campaign:")
    claim_prize = scripts.register("claim_prize", CLAIM_PRIZE_LUA)
    await scripts.load()                                 # at start-up: SCRIPT LOAD
    left = await claim_prize(keys=["stock:p1", "claimed:p1"], args=[member_id])

A call is one EVALSHA. Redis keeps loaded scripts only in memory: after a restart
(or SCRIPT FLUSH, or a failover to a replica that never saw them) the server answers
NOSCRIPT, and the call loads the script again and retries once, so no caller ever
sees that error. Running by SHA sends the body once per server, not on every call.

Keys: a script reaches only the keys it is given in KEYS (never names built inside
the Lua: Redis Cluster routes a script by its KEYS, and the prefix could not reach
them). The registry puts the service's prefix in front of each, so two services
sharing a Redis cannot touch each other's keys and a script reads as if it were
alone. The one exception is the service's own event stream (pond.events.<service>,
which every consumer reads by that name): given in `streams`, it is passed in full.
ARGV is passed as it is.

The runtime's own scripts are here too, on the host's registry for the service: the
leases (leases.py) and the outbox relay's fenced publish (outbox.py).

Durable state lives in the service's document store; Redis holds counters and
claims that make hot paths fast (stock left, claims per member, rate limits) and
that can be rebuilt from the store (see the README). A script's effect that must
survive is recorded in the store as well, in the same unit of work as the state it
belongs to."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError

log = structlog.get_logger("pond.redis.scripts")

ScriptArg = str | bytes | int | float


class Script:
    """One registered script: `await script(keys=[...], args=[...])`."""

    def __init__(self, registry: ScriptRegistry, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # The SHA Redis gives a script is the SHA-1 of its body: known without asking.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._registry = registry
        self.reloads = 0  # times the server had lost it (restart, SCRIPT FLUSH)

    async def __call__(
        self, keys: Sequence[str] = (), args: Sequence[ScriptArg] = ()
    ) -> Any:
        redis = self._registry.redis
        full_keys = [self._registry.key(k) for k in keys]
        try:
            return await redis.evalsha(self.sha, len(full_keys), *full_keys, *args)
        except NoScriptError:
            self.reloads += 1
            log.info("redis script reloaded", script=self.name, prefix=self._registry.prefix)
            await self.load()
            return await redis.evalsha(self.sha, len(full_keys), *full_keys, *args)

    async def load(self) -> None:
        loaded = await self._registry.redis.script_load(self.source)
        sha = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
        if sha != self.sha:  # never expected: the server hashes differently
            raise RuntimeError(f"redis gave script {self.name} the SHA {sha}, not {self.sha}")


class ScriptRegistry:
    """A service's Lua scripts and its key prefix (e.g. `pond:campaign:`)."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, streams: Collection[str] = ()
    ) -> None:
        if not prefix or not prefix.endswith(":"):
            raise ValueError("a key prefix names the service and ends with ':' (pond:campaign:)")
        self.redis = redis
        self.prefix = prefix
        self.streams = frozenset(streams)  # the service's streams, named in full
        self._scripts: dict[str, Script] = {}

    def register(self, name: str, source: str) -> Script:
        """Registers `source` as `name`, once per registry."""
        if name in self._scripts:
            raise ValueError(f"script {name!r} is already registered")
        script = self._scripts[name] = Script(self, name, source)
        return script

    def key(self, name: str) -> str:
        """The full name of one of the service's keys (a stream of the service's is
        already one)."""
        return name if name in self.streams else self.prefix + name

    async def load(self) -> None:
        """Loads every registered script (SCRIPT LOAD), e.g. at start-up so the first
        calls need no reload; calls load them on their own when needed anyway."""
        for script in self._scripts.values():
            await script.load()

    def __getitem__(self, name: str) -> Script:
        return self._scripts[name]
