"""The figures: each member RPC's calls/s as a ratio to the mean of the echo runs
right before and after it, against its goal; printed as a table and written to
bench/results/latest.json (git-ignored)."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.load import BUSY_MACHINE_CPUS, RunResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Throughput as a share of the bare grpc.aio echo server's.
GOALS = {"GetMember": 0.60, "RecordOrder": 0.25}  # issue 8


@dataclass
class Figure:
    metric: str
    run: RunResult
    echo_runs: list[RunResult]
    goal: float

    @property
    def baseline(self) -> float:
        return sum(r.rate for r in self.echo_runs) / len(self.echo_runs)

    @property
    def ratio(self) -> float:
        return self.run.rate / self.baseline if self.baseline else 0.0

    @property
    def passed(self) -> bool:
        return self.ratio >= self.goal and not self.run.errors

    @property
    def cpu_ratio(self) -> float | None:
        """Echo's server CPU per call over this RPC's: the same question asked of CPU
        time instead of wall time (steadier when the client is the bottleneck)."""
        mine = self.run.server_cpu_us_per_call
        theirs = [r.server_cpu_us_per_call for r in self.echo_runs]
        if not mine or any(t is None for t in theirs):
            return None
        return sum(theirs) / len(theirs) / mine

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "calls_per_second": round(self.run.rate, 1),
            "echo_calls_per_second": round(self.baseline, 1),
            "ratio": round(self.ratio, 4),
            "goal": self.goal,
            "passed": self.passed,
            "server_cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 4),
        }


def figures(runs: list[RunResult]) -> list[Figure]:
    """Pairs each member run with the echo runs adjacent to it in the schedule."""
    out = []
    for i, run in enumerate(runs):
        if run.label not in GOALS:
            continue
        adjacent = [
            runs[j] for j in (i - 1, i + 1) if 0 <= j < len(runs) and runs[j].label == "echo"
        ]
        if adjacent:
            out.append(Figure(run.label, run, adjacent, GOALS[run.label]))
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def table(runs: list[RunResult], figs: list[Figure]) -> str:
    lines = [
        f"{'run':<13}{'calls/s':>10}{'server CPU/call':>17}{'server CPU':>12}"
        f"{'client CPU':>12}{'other load':>12}{'errors':>8}"
    ]
    for r in runs:
        per_call = r.server_cpu_us_per_call
        other = r.other_load
        lines.append(
            f"{r.label:<13}{r.rate:>10,.0f}"
            f"{'-' if per_call is None else f'{per_call:,.0f} µs':>17}"
            f"{_pct(None if r.server_cpu is None else r.server_cpu / r.seconds):>12}"
            f"{_pct(r.client_cpu / r.seconds):>12}"
            f"{'-' if other is None else f'{other:.2f} CPU':>12}{r.errors:>8}"
        )
    lines.append("")
    lines.append(
        f"{'metric':<13}{'calls/s':>10}{'echo':>10}{'ratio':>8}{'goal':>8}"
        f"{'result':>8}   (CPU-cost ratio)"
    )
    for f in figs:
        lines.append(
            f"{f.metric:<13}{f.run.rate:>10,.0f}{f.baseline:>10,.0f}"
            f"{f.ratio:>8.1%}{'>=' + format(f.goal, '.0%'):>8}"
            f"{'PASS' if f.passed else 'MISS':>8}   ({_pct(f.cpu_ratio)})"
        )
    lines.append(
        "ratio: calls/s over the mean of the adjacent echo runs. CPU-cost ratio: echo's"
        " server CPU per call over\nthe RPC's, the same question in CPU time (steadier"
        " on a busy machine). other load: CPUs used\nby anything but the client and the"
        " server under test and its Valkey (other processes)."
    )
    busy = [r.label for r in runs if r.busy_machine]
    if busy:
        lines.append(
            f"\nwarning: other work took more than {BUSY_MACHINE_CPUS} CPU during "
            f"{len(busy)} of {len(runs)} runs ({', '.join(busy)}): the machine was "
            "busy, so these ratios are noisier than usual; rerun when it is quiet."
        )
    return "\n".join(lines)


def environment() -> dict:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "aiosqlite": version("aiosqlite"),
    }


def write_json(payload: dict, name: str = "latest.json") -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
