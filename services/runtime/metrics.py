"""Per-RPC Prometheus metrics: calls by method and status code, latency, and the
calls that failed by method and ErrorInfo reason (why INVALID_ARGUMENT: which check,
or a MALFORMED_REQUEST body; why UNAUTHENTICATED).

The counts live in plain ints updated on the event loop and are turned into
Prometheus families only when scraped. prometheus_client's Counter and Histogram
take a lock on every update, which cost more per RPC than all of this (see the
CheckMembership-vs-echo bench); every RPC is recorded on the event-loop thread, so
no lock is needed, and a scrape (from the metrics server's thread) copies the
tables in one C-level call each.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_go_float = cast(Callable[[float], str], floatToGoString)  # (untyped upstream)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class _Latency:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class RpcMetrics(Collector):
    """Calls, errors by reason and latency of one protocol: `pond_<kind>_requests`,
    `pond_<kind>_errors`, `pond_<kind>_request_seconds` (grpc for services, http for
    the gateway)."""

    def __init__(self, kind: str = "grpc", what: str = "gRPC calls") -> None:
        self._kind, self._what = kind, what
        self._calls: dict[tuple[str, str], int] = {}
        self._latency: dict[str, _Latency] = {}
        self._errors: dict[tuple[str, str], int] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        self._calls[key] = self._calls.get(key, 0) + 1
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = _Latency()
        latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def record_error(self, method: str, reason: str) -> None:
        key = (method, reason)
        self._errors[key] = self._errors.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            f"pond_{self._kind}_requests", f"{self._what} handled", labels=["method", "code"]
        )
        for (method, code), count in list(self._calls.items()):
            calls.add_metric([method, code], count)
        yield calls
        errors = CounterMetricFamily(
            f"pond_{self._kind}_errors",
            f"{self._what} that failed, by reason",
            labels=["method", "reason"],
        )
        for (method, reason), count in list(self._errors.items()):
            errors.add_metric([method, reason], count)
        yield errors
        latency = HistogramMetricFamily(
            f"pond_{self._kind}_request_seconds", f"{self._what}: latency", labels=["method"]
        )
        for method, hist in list(self._latency.items()):
            counts, running, buckets = list(hist.counts), 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                buckets.append((_go_float(bound), running))
            latency.add_metric([method], buckets, sum_value=hist.total)
        yield latency


RPC_METRICS = RpcMetrics()
REGISTRY.register(RPC_METRICS)
