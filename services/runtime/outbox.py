"""The outbox relay: a service writes each event into its own store in the same
transaction as the state change (so a crash cannot separate them); this relay
publishes pending events to the producer's stream and then marks them published.
A crash between publish and mark republishes: consumers dedupe by event id."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import redis.asyncio as aioredis
import structlog

from services.runtime.eventbus import publish

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
    ) -> None:
        self.store, self.redis, self.stream = store, redis, stream
        self.poll_seconds, self.batch = poll_seconds, batch
        self.coalesce_seconds = 0.002
        self._wake = asyncio.Event()

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
        while not stop.is_set():
            # Cleared before reading, so a commit that lands during the read wakes the
            # next round instead of waiting out the poll.
            self._wake.clear()
            try:
                await self.publish_pending()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("outbox relay cannot reach Redis; will retry", error=repr(exc))
            except Exception:
                # A store error must not end the relay silently: log and retry.
                log.exception("outbox relay failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            # Under load, let a few more commits land so one XADD pipeline carries them.
            await asyncio.sleep(self.coalesce_seconds)
