"""`python -m bench --profile`: where a server's time goes per call.

Two views of each timed window: CPU per call of every thread of the server process
(from /proc: the event loop, grpc's poller, aiosqlite's connection threads), and
cProfile of the event-loop thread, as microseconds per completed call for named
sections (interceptor, auth, logging, metrics, servicer, store, conversion) and the
top functions by own time. cProfile slows Python code more than C code, so read
its figures as shares, not as the unprofiled cost.
"""

from __future__ import annotations

import pstats
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import RunResult
from bench.procstat import thread_cpu

# (section, file path fragment, function name): cumulative time per call, in order.
SECTIONS = [
    ("grpc: generic handler lookup", "runtime/interceptors.py", "service"),
    ("interceptor wrapper (all below it)", "runtime/interceptors.py", "wrapper"),
    ("  _begin: metadata, request id, auth", "runtime/interceptors.py", "_begin"),
    ("    Authorizer.authorize", "runtime/auth.py", "authorize"),
    ("  _finish: metrics + log line", "runtime/interceptors.py", "_finish"),
    ("    metrics record", "runtime/metrics.py", "record"),
    ("    log line queued", "runtime/logs.py", "add"),
    ("  set_trailing_metadata", "", "set_trailing_metadata"),
    ("log lines formatted and written (per call)", "runtime/logs.py", "flush"),
    ("servicer CheckMembership", "tagging/api.py", "CheckMembership"),
    ("  TaggingApp.check", "tagging/segments.py", "check"),
    ("servicer GetMember", "member/api.py", "GetMember"),
    ("servicer RecordOrder", "member/api.py", "RecordOrder"),
    ("  _member_pb (tier program + convert)", "member/api.py", "_member_pb"),
    ("  _read_member_pb (kept conversions)", "member/api.py", "_read_member_pb"),
    ("    tier_program", "member/tiering.py", "tier_program"),
    ("    convert.member_pb", "member/convert.py", "member_pb"),
    ("      FieldCipher.decrypt", "runtime/crypto.py", "decrypt"),
    ("      Timestamp FromDatetime", "", "FromDatetime"),
    ("  convert.order_pb", "member/convert.py", "order_pb"),
    ("  fingerprint(request)", "runtime/idempotency.py", "fingerprint"),
    ("  app.record_order", "member/purchases.py", "record_order"),
    ("    idempotency recall", "runtime/idempotency.py", "recall"),
    ("    kept response rendered", "member/convert.py", "recorded_order_pb"),
    ("  app.get", "member/service.py", "get"),
    ("    store.get_member", "member/store.py", "get_member"),
    ("    store.read_member", "member/store.py", "read_member"),
    ("    store.get_order", "member/store.py", "get_order"),
    ("    store.growth_since", "member/store.py", "growth_since"),
    ("    documents.member_from_doc", "member/documents.py", "member_from_doc"),
    ("    apply_tier_upgrade", "member/service.py", "apply_tier_upgrade"),
    ("    EventWriter (events built)", "member/events.py", "_pack"),
    ("    store.commit (lock, BEGIN, _apply, COMMIT)", "member/store.py", "commit"),
    ("      _apply (the writes)", "runtime/documents_sqlite.py", "_apply"),
    ("      documents.member_to_doc", "member/documents.py", "member_to_doc"),
    ("  aiosqlite Connection._execute (all hops)", "aiosqlite/core.py", "_execute"),
    ("  outbox relay publish_pending", "runtime/outbox.py", "publish_pending"),
]
IDLE = ("{method 'poll' of 'select.epoll' objects}",)


@dataclass
class Window:
    """Brackets one timed window: CPU per thread of the server, and its profiler."""

    label: str
    pid: int
    send: object  # Callable[[int], None]: signals the server process
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    def start(self) -> None:
        self.before = thread_cpu(self.pid)
        self.send(signal.SIGUSR1)

    def stop(self) -> None:
        self.send(signal.SIGUSR2)
        self.after = thread_cpu(self.pid)

    def thread_deltas(self) -> list[tuple[str, float]]:
        out = []
        for tid, (name, cpu) in self.after.items():
            used = cpu - self.before.get(tid, (name, 0.0))[1]
            if used > 0:
                out.append((f"{'main' if tid == self.pid else 'thread'} {name}/{tid}", used))
        return sorted(out, key=lambda x: -x[1])


def _wait_for(path: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _section_rows(stats: pstats.Stats, calls: int) -> list[str]:
    rows = []
    table = stats.stats  # type: ignore[attr-defined]
    for title, fragment, func in SECTIONS:
        ct = n = 0.0
        for (filename, _line, name), (_cc, nc, _tt, cum, _callers) in table.items():
            if name == func and fragment in filename.replace("\\", "/"):
                ct += cum
                n += nc
        if n:
            rows.append(f"  {title:<48}{ct / calls * 1e6:>9,.1f} µs  ({n / calls:.2f} calls)")
    return rows


def _top_rows(stats: pstats.Stats, calls: int, limit: int = 25) -> list[str]:
    table = stats.stats  # type: ignore[attr-defined]
    items = sorted(table.items(), key=lambda kv: -kv[1][2])
    rows = []
    for (filename, line, name), (_cc, nc, tt, _ct, _callers) in items[:limit]:
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else ""
        rows.append(f"  {tt / calls * 1e6:>8,.1f} µs  {nc / calls:>6.2f}x  {name}  {where}")
    return rows


def profile_report(profile: Path, window: Window, run: RunResult) -> str:
    calls = max(run.calls, 1)
    lines = [f"== {run.label}: {run.calls:,} calls profiled =="]
    lines.append("CPU per call by thread (/proc):")
    for name, used in window.thread_deltas()[:8]:
        lines.append(f"  {name:<28}{used / calls * 1e6:>9,.1f} µs")
    if not _wait_for(profile):
        lines.append(f"  (no profile written at {profile})")
        return "\n".join(lines)
    stats = pstats.Stats(str(profile))
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values())
    idle = sum(v[2] for k, v in table.items() if k[2] in IDLE)
    lines.append(
        f"event-loop thread (cProfile): {(total - idle) / calls * 1e6:,.1f} µs busy "
        f"per call, {idle / total:.0%} of the window idle in epoll"
    )
    lines.append("sections, cumulative per call:")
    lines.extend(_section_rows(stats, calls))
    lines.append("top functions by own time per call:")
    lines.extend(_top_rows(stats, calls))
    return "\n".join(lines)


def breakdown(profile_dir: Path, runs: list[RunResult], windows: list[Window]) -> str:
    """Pairs each run with its window and the profile its server wrote (the n-th
    window of a server writes <server>/<n>.prof)."""
    seen: dict[str, int] = {}
    parts = []
    for run, window in zip(runs, windows, strict=True):
        server = "echo" if run.label == "echo" else "member"
        seen[server] = seen.get(server, 0) + 1
        if run.label == "echo" and seen[server] > 1:
            continue  # one echo profile is enough
        parts.append(profile_report(profile_dir / server / f"{seen[server]}.prof", window, run))
    return "\n\n".join(parts)
