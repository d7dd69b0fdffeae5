"""The outbox relay: a service writes each event into its own store in the same
transaction as the state change (so a crash cannot separate them); this relay
publishes pending events to the producer's stream and then marks them published.
A crash between publish and mark republishes: consumers dedupe by event id."""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis.asyncio as aioredis
import structlog

from services.runtime.eventbus import publish
from services.runtime.redis_health import RedisLink

log = structlog.get_logger("pond.outbox")


class OutboxStore(Protocol):
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]: ...
    async def outbox_mark_published(self, seqs: list[int]) -> None: ...


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        redis: aioredis.Redis,
        stream: str,
        *,
        poll_seconds: float = 1.0,
        batch: int = 500,
        name: str = "",
    ) -> None:
        self.store, self.redis, self.stream = store, redis, stream
        self.poll_seconds, self.batch = poll_seconds, batch
        self.coalesce_seconds = 0.002
        self._wake = asyncio.Event()
        # How this relay is named in the Redis-health metrics and logs.
        self.link = RedisLink(name or f"outbox:{stream}")

    def notify(self) -> None:
        """Called after a commit that wrote events, so they go out at once."""
        self._wake.set()

    async def publish_pending(self) -> int:
        total = 0
        while True:
            pending = await self.store.outbox_pending(self.batch)
            if not pending:
                return total
            await publish(self.redis, self.stream, [raw for _seq, raw in pending])
            await self.store.outbox_mark_published([seq for seq, _raw in pending])
            total += len(pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Publishes until `stop`; never ends over an error. While Redis is
        unreachable the relay says so (metrics, error log) and retries with backoff
        (commits in between only add to the outbox; nothing is lost). When idle it
        pings Redis once a poll, so the metrics tell an outage before events wait."""
        woken = True
        while not stop.is_set():
            # Cleared before reading, so a commit that lands during the read wakes the
            # next round instead of waiting out the poll.
            self._wake.clear()
            try:
                published = await self.publish_pending()
                if not published and not woken:
                    await self.redis.ping()
                self.link.ok()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                # Retry after the backoff, not at the next commit.
                await asyncio.sleep(self.link.failed(exc))
                woken = True
                continue
            except Exception:
                # A store error (or a refused command) must not end the relay silently.
                log.exception("outbox relay failed; will retry")
                await asyncio.sleep(self.link.backoff.next())
                woken = True
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                woken = True
            except TimeoutError:
                woken = False
            # Under load, let a few more commits land so one XADD pipeline carries them.
            await asyncio.sleep(self.coalesce_seconds)
