"""Whether each Redis client of the process (a relay, a consumer) can reach Redis,
said by metrics and error-level log lines, and the backoff it waits between tries.

Metrics (Prometheus, per client name):
  pond_redis_up                      1 while the client's last Redis call worked, else 0
  pond_redis_unreachable_seconds     how long the client has failed to reach Redis (0 when up)

A client reports `failed(exc)` after each failed try and `ok()` after a success: the
first failure logs an error, a long outage logs it again every `REPEAT_SECONDS`,
and the recovery logs how long Redis was gone. Background loops never end over
an outage: they wait `failed()`'s delay and try again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import structlog
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("pond.redis")

REPEAT_SECONDS = 30.0


class Backoff:
    """Exponential delays between tries: first, 2*first, ... up to `cap`."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class RedisLink:
    """One background client's view of Redis (see the module docstring)."""

    def __init__(self, client: str, backoff: Backoff | None = None) -> None:
        self.client = client
        self.backoff = backoff or Backoff()
        self.down_since: float | None = None  # monotonic time of the first failure
        self._last_logged = 0.0
        REDIS_HEALTH.track(self)

    @property
    def up(self) -> bool:
        return self.down_since is None

    def unreachable_seconds(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def failed(self, exc: BaseException) -> float:
        """Records a failed try; returns how long to wait before the next one."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = self._last_logged = now
            log.error("redis unreachable", client=self.client, error=_describe(exc))
        elif now - self._last_logged >= REPEAT_SECONDS:
            self._last_logged = now
            log.error(
                "redis still unreachable",
                client=self.client,
                seconds=round(now - self.down_since, 1),
                error=_describe(exc),
            )
        return self.backoff.next()

    def ok(self) -> None:
        if self.down_since is not None:
            log.info(
                "redis reachable again",
                client=self.client,
                unreachable_seconds=round(time.monotonic() - self.down_since, 1),
            )
            self.down_since = None
        self.backoff.reset()


def _describe(exc: BaseException) -> str:
    # redis-py's repr() of its errors is only the class's category.
    return f"{type(exc).__name__}: {exc}"[:300]


class RedisHealth(Collector):
    """The process's Redis links, turned into gauges when scraped."""

    def __init__(self) -> None:
        self._links: dict[str, RedisLink] = {}

    def track(self, link: RedisLink) -> None:
        # A restarted component replaces its predecessor under the same name.
        self._links[link.client] = link

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "pond_redis_up", "1 while the client reaches Redis, 0 while it cannot",
            labels=["client"],
        )
        down = GaugeMetricFamily(
            "pond_redis_unreachable_seconds",
            "seconds the client has been unable to reach Redis (0 when up)",
            labels=["client"],
        )
        for name, link in list(self._links.items()):
            up.add_metric([name], 1.0 if link.up else 0.0)
            down.add_metric([name], link.unreachable_seconds())
        yield up
        yield down


REDIS_HEALTH = RedisHealth()
REGISTRY.register(REDIS_HEALTH)
