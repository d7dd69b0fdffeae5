"""The closed-loop client: N coroutines on one channel, each sending its next call
as soon as the previous one returns. Only calls completed inside the timed window
(after a warm-up) count; the same code drives the echo server and the member RPCs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from bench.procstat import cpu_seconds, machine_busy_seconds

CALL_TIMEOUT = 10.0
# Other work on the machine above this many CPUs during a run makes its figure suspect.
BUSY_MACHINE_CPUS = 0.25


@dataclass
class RunResult:
    label: str
    calls: int
    errors: int
    seconds: float
    client_cpu: float
    server_cpu: float | None
    machine_busy: float | None = None
    # CPU of processes that serve the calls besides the server (the Valkey server).
    helper_cpu: float = 0.0
    first_error: str = ""
    attempts: int = 1

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def other_load(self) -> float | None:
        """CPUs' worth of work by anything but this client and the server under test
        (other processes on a shared machine, the Valkey server) during the window."""
        if self.machine_busy is None or self.server_cpu is None or not self.seconds:
            return None
        ours = self.client_cpu + self.server_cpu + self.helper_cpu
        return max(0.0, self.machine_busy - ours) / self.seconds

    @property
    def busy_machine(self) -> bool:
        return (self.other_load or 0.0) > BUSY_MACHINE_CPUS

    @property
    def server_cpu_us_per_call(self) -> float | None:
        if self.server_cpu is None or not self.calls:
            return None
        return self.server_cpu / self.calls * 1e6

    def as_dict(self) -> dict:
        return dict(
            asdict(self),
            calls_per_second=round(self.rate, 1),
            server_cpu_us_per_call=self.server_cpu_us_per_call,
            other_load_cpus=self.other_load,
        )

    def note(self, unit: str) -> str:
        """The run's progress line: `label  rate unit`, its errors, a busy machine."""
        return (f"  {self.label:<12} {self.rate:>9,.0f} {unit}"
                + (f"  ({self.errors} errors: {self.first_error})" if self.errors else "")
                + (f"  (other work took {self.other_load:.2f} CPU)"
                   if self.busy_machine else ""))


class Remeasuring:
    """A run made on a busy machine (BUSY_MACHINE_CPUS) is measured once more and the
    quieter of the two attempts kept, up to `retries` times in a bench."""

    def __init__(self, retries: int) -> None:
        self.retries = retries

    async def quieter(self, measure: Callable[[int], Awaitable[RunResult]],
                      say: Callable[[str], None]) -> RunResult:
        """`measure(attempt)` once, or twice when the first ran on a busy machine."""
        best: RunResult | None = None
        for attempt in (1, 2):
            run = await measure(attempt)
            run.attempts = attempt
            if best is None or (run.other_load or 0.0) < (best.other_load or 0.0):
                best = run
            if not run.busy_machine or attempt == 2 or self.retries == 0:
                break
            self.retries -= 1
            say("  (measuring it again)")
        assert best is not None
        return best


async def closed_loop(
    label: str,
    method: grpc.aio.UnaryUnaryMultiCallable,
    make_request: Callable[[], Any],
    metadata: tuple,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    server_pid: int,
    helper_pids: tuple[int, ...] = (),
    on_window: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> RunResult:
    """Runs `concurrency` workers for warmup + duration seconds and counts what
    completed in the timed window. `on_window` (start, stop) hooks bracket it."""

    def helpers() -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in helper_pids)

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
        m0, h0 = machine_busy_seconds(), helpers()
        await asyncio.sleep(duration)
        ok1, err1 = ok, errors
        t1, c1, s1 = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
        m1, h1 = machine_busy_seconds(), helpers()
        if on_window:
            on_window[1]()
    finally:
        running = False
        await asyncio.gather(*workers, return_exceptions=True)
    server_cpu = s1 - s0 if s0 is not None and s1 is not None else None
    busy = m1 - m0 if m0 is not None and m1 is not None else None
    return RunResult(
        label, ok1 - ok0, err1 - err0, t1 - t0, c1 - c0, server_cpu, busy, h1 - h0, first_error
    )
