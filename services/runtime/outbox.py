"""The outbox relay: a service writes each event into its own store in the same unit
of work as the state change (so a crash cannot separate them); the relay publishes
pending events to the producer's stream and then marks them published. A crash
between publish and mark republishes: consumers apply each event once (marks).

One relay per service publishes at a time, whatever the number of replicas: the
relay that holds the service's lease in Redis (`pond:<service>:relay`, see
leases.py). The others wait and take over within a third of the lease's time to live
after it lapses (a killed leader) or at once when it is released (a stopped one).
Publishing is fenced: the script that adds the events checks the lease token in the
same step, so a leader that paused past its lease cannot publish beside its
successor. Events committed on another replica go out at the leader's next poll
(`POND_OUTBOX_POLL_SECONDS`); those committed on the leader's replica at once.

Metrics (per service): pond_outbox_backlog (events waiting, counted up to
BACKLOG_CAP), pond_outbox_oldest_seconds (age of the oldest waiting event),
pond_outbox_published_total, pond_outbox_relay_leader (1 on the replica publishing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Protocol

import redis.asyncio as aioredis
import structlog
from pond.events.v1 import event_pb2
from prometheus_client import Counter, Gauge

from services.runtime.envelopes import STREAM_MAXLEN, event_type, publish
from services.runtime.leases import Leases
from services.runtime.redis_health import RedisLink
from services.runtime.redis_scripts import ScriptArg

log = structlog.get_logger("pond.outbox")

BACKLOG_CAP = 10_000
BACKLOG = Gauge("pond_outbox_backlog", "outbox events waiting to be published", ["service"])
OLDEST = Gauge(
    "pond_outbox_oldest_seconds", "age of the oldest event waiting in the outbox", ["service"]
)
PUBLISHED = Counter("pond_outbox_published", "outbox events published", ["service"])
LEADER = Gauge(
    "pond_outbox_relay_leader", "1 on the replica whose relay holds the lease", ["service"]
)

# KEYS[1] lease, KEYS[2] stream; ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] maxlen,
# ARGV[4..] pairs of envelope and its type. -1 when the lease is not ours (nothing
# added). Each entry carries the envelope ("e"), its type ("t": consumer groups pass
# over the types they do not want without parsing the envelope; left out for an
# envelope that cannot be read, which every group then reads and dead-letters) and
# its publisher ("p": the lease token: host, pid, for operators and tests).
FENCED_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[i], 'p', ARGV[1])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
               'e', ARGV[i], 't', ARGV[i + 1], 'p', ARGV[1])
  end
end
return (#ARGV - 3) / 2
"""


class OutboxStore(Protocol):
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]: ...
    # (a list: what the services' stores take; the document store takes any sequence)
    async def outbox_mark_published(self, seqs: list[int]) -> None: ...


class LeaseLost(Exception):
    pass


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        leases: Leases,
        stream: str,
        *,
        poll_seconds: float = 1.0,
        batch: int = 500,
        name: str = "",
        service: str = "",
        lease_ttl_seconds: float = 10.0,
        coalesce_seconds: float = 0.01,
    ) -> None:
        self.store, self.stream = store, stream
        self.poll_seconds, self.batch = poll_seconds, batch
        self.coalesce_seconds = coalesce_seconds
        self._wake = asyncio.Event()
        # How this relay is named in the Redis-health metrics and logs.
        self.link = RedisLink(name or f"outbox:{stream}")
        self.service = service or stream.rsplit(".", 1)[-1]
        scripts = leases.scripts
        if scripts.key(stream) != stream:
            raise ValueError(f"{stream} must be one of the script registry's streams")
        # pond:<service>:relay under the host's registry for the service.
        self.lease = leases.lease("relay", int(lease_ttl_seconds * 1000))
        self._publish = scripts.register("outbox_publish", FENCED_PUBLISH)
        self._renewed_at = 0.0

    @property
    def leader(self) -> bool:
        return self.lease.held

    def notify(self) -> None:
        """Called after a commit that wrote events, so they go out at once."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publishes the whole outbox if this relay holds the lease (taking it when
        free); 0 without it. LeaseLost if the lease went to another relay meanwhile."""
        if not await self._lead():
            return 0
        total = 0
        while True:
            pending = await self.store.outbox_pending(self.batch)
            if not pending:
                return total
            args: list[ScriptArg] = [self.lease.token, self.lease.ttl_ms, STREAM_MAXLEN]
            for _seq, raw in pending:
                args += (raw, event_type(raw))
            added = await self._publish(keys=[self.lease.name, self.stream], args=args)
            if added < 0:
                self._lost()
                raise LeaseLost(self.lease.key)
            self._renewed_at = time.monotonic()
            await self.store.outbox_mark_published([seq for seq, _raw in pending])
            PUBLISHED.labels(self.service).inc(len(pending))
            total += len(pending)
            if len(pending) < self.batch:
                # The outbox held no more when read; what committed since has woken
                # the relay for its next round (no second read to find it empty).
                return total

    async def _lead(self) -> bool:
        """Holds the lease: renewed a third of its life after the last renewal (or
        publish), taken when free."""
        now = time.monotonic()
        if self.lease.held and now - self._renewed_at < self._renew_every:
            return True
        was = self.lease.held
        if await self.lease.acquire():
            self._renewed_at = now
            if not was:
                LEADER.labels(self.service).set(1)
                log.info("outbox relay leads", service=self.service, holder=self.lease.token)
            return True
        if was:
            self._lost()
        return False

    @property
    def _renew_every(self) -> float:
        return self.lease.ttl_ms / 3000

    def _lost(self) -> None:
        self.lease.held = False
        LEADER.labels(self.service).set(0)
        log.warning("outbox relay lost its lease", service=self.service)

    async def run(self, stop: asyncio.Event) -> None:
        """Publishes until `stop`; never ends over an error. While Redis is
        unreachable the relay says so (metrics, error log) and retries with backoff
        (commits in between only add to the outbox; nothing is lost). A follower
        tries for the lease every third of its time to live. On `stop` the leader
        publishes what is left and releases the lease for a successor."""
        LEADER.labels(self.service).set(0)
        loop = asyncio.get_running_loop()
        # A stop wakes the relay like a commit does: one Event to wait on, no task
        # made per round (the relay goes round once per batch of commits under load).
        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _f: self._wake.set())
        try:
            await self._relay(stop, loop)
        finally:
            stopping.cancel()
        await self._hand_off()

    async def _relay(self, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        while not stop.is_set():
            # Cleared before reading, so a commit that lands during the read wakes the
            # next round instead of waiting out the poll.
            self._wake.clear()
            try:
                await self.publish_pending()
                self.link.ok()
            except LeaseLost:
                continue
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                # Retry after the backoff, not at the next commit.
                await _pause(stop, self.link.failed(exc))
                continue
            except Exception:
                # A store error (or a refused command) must not end the relay silently.
                log.exception("outbox relay failed; will retry")
                await _pause(stop, self.link.backoff.next())
                continue
            wait = self.poll_seconds if self.leader else self._renew_every
            timer = loop.call_later(min(wait, self._renew_every), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            # Under load, let a few more commits land so one publish carries them.
            await asyncio.sleep(self.coalesce_seconds)

    async def _hand_off(self) -> None:
        if not self.lease.held:
            return
        try:
            await asyncio.wait_for(self.publish_pending(), 5.0)
            await self.lease.release()
            log.info("outbox relay released its lease", service=self.service)
        except Exception as exc:  # the successor takes over when the lease expires
            log.warning("outbox relay could not hand off", service=self.service, error=repr(exc))
        finally:
            self.lease.held = False
            LEADER.labels(self.service).set(0)

    async def measure(self) -> None:
        """Updates the backlog gauges (the host calls it every few seconds)."""
        pending = await self.store.outbox_pending(BACKLOG_CAP)
        BACKLOG.labels(self.service).set(len(pending))
        age = 0.0
        if pending:
            event = event_pb2.Event.FromString(pending[0][1])
            occurred = event.occurred_at.ToDatetime(tzinfo=UTC)
            age = max(0.0, (datetime.now(UTC) - occurred).total_seconds())
        OLDEST.labels(self.service).set(age)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


__all__ = ["BACKLOG_CAP", "OutboxRelay", "OutboxStore", "publish"]
