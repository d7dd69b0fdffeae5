"""Where a scoring run's time goes, without changing its code: the functions a run
calls are wrapped (on their modules, classes or the instances at hand) with timers
that add wall and CPU seconds to named stages. Nested stages are reported under
their parent; the wrappers cost a few microseconds per call.

Also: peak RSS (VmHWM, resettable through /proc/self/clear_refs) and the share of a
window during which some task on the machine waited for a CPU (/proc/pressure/cpu),
which tells how far a wall-clock figure was stretched by other load."""

from __future__ import annotations

import functools
import inspect
import time
from collections import defaultdict
from pathlib import Path

CPU = time.process_time


class Stages:
    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peak_mb: dict[str, float] = {}  # top-level stages: VmHWM when they returned
        self.missing: list[str] = []  # attributes not found (the service code moved on)
        self._undo: list[tuple[object, str, object]] = []

    def _add(self, label: str, wall: float, cpu: float) -> None:
        self.wall[label] += wall
        self.cpu[label] += cpu
        self.calls[label] += 1
        if " / " not in label:
            self.peak_mb[label] = max(self.peak_mb.get(label, 0.0), peak_rss_mb())

    def wrap(self, owner: object, attr: str, label: str) -> None:
        """Times every call of owner.attr (a function, coroutine function, async
        generator function or classmethod) under `label`; a missing attribute is
        noted in `missing` and skipped."""
        try:
            raw = inspect.getattr_static(owner, attr)
        except AttributeError:
            self.missing.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}")
            return
        fn = getattr(owner, attr)
        add = self._add
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def timed_gen(*args, **kwargs):
                it = fn(*args, **kwargs).__aiter__()
                while True:
                    w, c = time.perf_counter(), CPU()
                    try:
                        item = await it.__anext__()
                    except StopAsyncIteration:
                        add(label, time.perf_counter() - w, CPU() - c)
                        return
                    add(label, time.perf_counter() - w, CPU() - c)
                    yield item

            wrapper = timed_gen
        elif inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args, **kwargs):
                w, c = time.perf_counter(), CPU()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    add(label, time.perf_counter() - w, CPU() - c)

            wrapper = timed_async
        else:

            @functools.wraps(fn)
            def timed(*args, **kwargs):
                w, c = time.perf_counter(), CPU()
                try:
                    return fn(*args, **kwargs)
                finally:
                    add(label, time.perf_counter() - w, CPU() - c)

            wrapper = timed
        if isinstance(raw, classmethod):
            wrapper = staticmethod(wrapper)  # fn is already bound to the class
        setattr(owner, attr, wrapper)
        self._undo.append((owner, attr, raw))

    def unwrap(self) -> None:
        for owner, attr, raw in reversed(self._undo):
            if isinstance(owner, type) or inspect.ismodule(owner):
                setattr(owner, attr, raw)
            else:
                delattr(owner, attr)  # an instance: its class attribute shows again
        self._undo.clear()

    def table(self) -> list[dict]:
        return [
            {
                "stage": k,
                "wall": round(self.wall[k], 3),
                "cpu": round(self.cpu[k], 3),
                "calls": self.calls[k],
                **({"peak_rss_mb": round(self.peak_mb[k], 1)} if k in self.peak_mb else {}),
            }
            for k in self.wall
        ]


def _status(field: str) -> int:
    """A /proc/self/status figure in kB (0 when unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb() -> float:
    kb = _status("VmHWM")
    if not kb:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def rss_mb() -> float:
    return _status("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_pressure_us() -> int | None:
    """Microseconds during which some task waited for a CPU, machine-wide."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Window:
    """Wall, CPU (this process) and CPU pressure over a `with` block."""

    def __enter__(self) -> Window:
        self.wall0, self.cpu0, self.psi0 = time.perf_counter(), CPU(), cpu_pressure_us()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = CPU() - self.cpu0
        psi1 = cpu_pressure_us()
        self.contention = (
            None
            if self.psi0 is None or psi1 is None or self.wall <= 0
            else min(1.0, (psi1 - self.psi0) / 1e6 / self.wall)
        )

    def as_dict(self) -> dict:
        return {
            "wall": round(self.wall, 3),
            "cpu": round(self.cpu, 3),
            "cpu_pressure": None if self.contention is None else round(self.contention, 3),
        }
