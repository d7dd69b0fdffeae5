"""The closed-loop client: N coroutines on one channel, each sending its next call
as soon as the previous one returns. Only calls completed inside the timed window
(after a warm-up) count; the same code drives the echo server and the member RPCs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from bench.procstat import cpu_seconds

CALL_TIMEOUT = 10.0


@dataclass
class RunResult:
    label: str
    calls: int
    errors: int
    seconds: float
    client_cpu: float
    server_cpu: float | None
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def server_cpu_us_per_call(self) -> float | None:
        if self.server_cpu is None or not self.calls:
            return None
        return self.server_cpu / self.calls * 1e6

    def as_dict(self) -> dict:
        return dict(asdict(self), calls_per_second=round(self.rate, 1),
                    server_cpu_us_per_call=self.server_cpu_us_per_call)


async def closed_loop(
    label: str, method: grpc.aio.UnaryUnaryMultiCallable, make_request: Callable[[], Any],
    metadata: tuple, *, concurrency: int, warmup: float, duration: float, server_pid: int,
    on_window: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> RunResult:
    """Runs `concurrency` workers for warmup + duration seconds and counts what
    completed in the timed window. `on_window` (start, stop) hooks bracket it."""
    ok = errors = 0
    first_error = ""
    running = True

    async def worker() -> None:
        nonlocal ok, errors, first_error
        while running:
            try:
                await method(make_request(), metadata=metadata, timeout=CALL_TIMEOUT)
                ok += 1
            except grpc.aio.AioRpcError as err:
                errors += 1
                first_error = first_error or f"{err.code().name}: {err.details()}"

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        if on_window:
            on_window[0]()
        ok0, err0 = ok, errors
        t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
        await asyncio.sleep(duration)
        ok1, err1 = ok, errors
        t1, c1, s1 = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
        if on_window:
            on_window[1]()
    finally:
        running = False
        await asyncio.gather(*workers, return_exceptions=True)
    server_cpu = s1 - s0 if s0 is not None and s1 is not None else None
    return RunResult(label, ok1 - ok0, err1 - err0, t1 - t0, c1 - c0, server_cpu, first_error)
