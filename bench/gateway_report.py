"""The gateway bench's figures: each gateway run as a ratio to the mean of the Starlette
runs right before and after it, the load generator's ceiling over the baseline, and
the gateway's added latency at p50 over GetMember called directly."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.load import RunResult

THROUGHPUT_GOAL = 0.50  # of the bare Starlette endpoint's requests/s
ADDED_P50_GOAL_US = 1000.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class LatencyFigure:
    direct_us: list[float]  # GetMember over gRPC, one at a time
    gateway_us: list[float]  # GET /v1/me through the gateway, one at a time
    errors: int

    @property
    def added_p50_us(self) -> float:
        return statistics.median(self.gateway_us) - statistics.median(self.direct_us)

    @property
    def passed(self) -> bool:
        return self.added_p50_us <= ADDED_P50_GOAL_US and not self.errors

    def summary(self, values: list[float]) -> dict[str, float]:
        return {"p50_us": round(statistics.median(values), 1),
                "p90_us": round(_quantile(values, 0.90), 1),
                "p99_us": round(_quantile(values, 0.99), 1), "n": len(values)}


@dataclass
class Ratio:
    run: RunResult
    baselines: list[RunResult]

    @property
    def baseline_rate(self) -> float:
        return sum(r.rate for r in self.baselines) / len(self.baselines)

    @property
    def ratio(self) -> float:
        return self.run.rate / self.baseline_rate if self.baseline_rate else 0.0

    @property
    def cpu_ratio(self) -> float | None:
        """Baseline server CPU per request over the gateway's (steadier on a busy box)."""
        mine = self.run.server_cpu_us_per_call
        theirs = [r.server_cpu_us_per_call for r in self.baselines]
        if not mine or any(t is None for t in theirs):
            return None
        return sum(t for t in theirs if t) / len(theirs) / mine


@dataclass
class Figures:
    runs: list[RunResult]
    latency: LatencyFigure
    server_errors: list[str]

    @property
    def ratios(self) -> list[Ratio]:
        out = []
        for i, run in enumerate(self.runs):
            if run.label != "gateway":
                continue
            near = [self.runs[j] for j in (i - 1, i + 1)
                    if 0 <= j < len(self.runs) and self.runs[j].label == "starlette"]
            out.append(Ratio(run, near))
        return out

    @property
    def mean_ratio(self) -> float:
        return statistics.mean(r.ratio for r in self.ratios)

    @property
    def framework_floor(self) -> Ratio | None:
        """The FastAPI route with no work over the Starlette runs around it."""
        for i, run in enumerate(self.runs):
            if run.label == "fastapi":
                near = [self.runs[j] for j in (i - 1, i + 1)
                        if 0 <= j < len(self.runs) and self.runs[j].label == "starlette"]
                return Ratio(run, near) if near else None
        return None

    @property
    def generator_headroom(self) -> float:
        """The generator against a server doing no work, over the fastest baseline run:
        how far the generator is from being what limits the baseline."""
        raw = max((r.rate for r in self.runs if r.label == "raw"), default=0.0)
        best = max((r.rate for r in self.runs if r.label == "starlette"), default=0.0)
        return raw / best if best else 0.0

    @property
    def passed(self) -> bool:
        return self.mean_ratio >= THROUGHPUT_GOAL and self.latency.passed and not any(
            r.errors for r in self.runs)

    def as_dict(self) -> dict:
        return {
            "runs": [r.as_dict() for r in self.runs],
            "ratios": [{"ratio": round(r.ratio, 4), "cpu_ratio": r.cpu_ratio,
                        "gateway_rps": round(r.run.rate, 1),
                        "starlette_rps": round(r.baseline_rate, 1)} for r in self.ratios],
            "mean_ratio": round(self.mean_ratio, 4),
            "fastapi_floor_ratio": (None if self.framework_floor is None
                                    else round(self.framework_floor.ratio, 4)),
            "throughput_goal": THROUGHPUT_GOAL,
            "generator_headroom": round(self.generator_headroom, 2),
            "latency": {"direct_get_member": self.latency.summary(self.latency.direct_us),
                        "gateway_me": self.latency.summary(self.latency.gateway_us),
                        "added_p50_us": round(self.latency.added_p50_us, 1),
                        "goal_us": ADDED_P50_GOAL_US},
            "passed": self.passed,
        }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def table(f: Figures) -> str:
    lines = [f"{'run':<11}{'requests/s':>11}{'server CPU/req':>16}{'client CPU':>12}"
             f"{'member+valkey CPU/req':>23}{'other load':>12}{'errors':>8}"]
    for r in f.runs:
        per = r.server_cpu_us_per_call
        helper = r.helper_cpu / r.calls * 1e6 if r.calls and r.helper_cpu else None
        lines.append(
            f"{r.label:<11}{r.rate:>11,.0f}{'-' if per is None else f'{per:,.0f} µs':>16}"
            f"{_pct(r.client_cpu / r.seconds if r.seconds else None):>12}"
            f"{'-' if helper is None else f'{helper:,.0f} µs':>23}"
            f"{'-' if r.other_load is None else f'{r.other_load:.2f} CPU':>12}{r.errors:>8}")
    lines.append("")
    for r in f.ratios:
        lines.append(f"GET /v1/me / Starlette: {r.run.rate:,.0f} / {r.baseline_rate:,.0f} "
                     f"requests/s = {r.ratio:.1%} (CPU-cost ratio {_pct(r.cpu_ratio)})")
    floor = f.framework_floor
    if floor is not None:
        lines.append(f"FastAPI, a route with no work / Starlette: {floor.run.rate:,.0f} / "
                     f"{floor.baseline_rate:,.0f} requests/s = {floor.ratio:.1%} (the most "
                     "any FastAPI gateway could reach)")
    verdict = "PASS" if f.mean_ratio >= THROUGHPUT_GOAL else "MISS"
    lines.append(f"throughput ratio {f.mean_ratio:.1%}, goal >= {THROUGHPUT_GOAL:.0%}: "
                 f"{verdict}")
    lines.append(f"load generator ceiling (no-framework server) = {f.generator_headroom:.1f}x "
                 "the fastest Starlette run: the generator is not what limits the baseline"
                 if f.generator_headroom >= 1.5 else
                 f"warning: the generator's ceiling is only {f.generator_headroom:.1f}x the "
                 "baseline: it may limit the baseline")
    lat = f.latency
    d, g = lat.summary(lat.direct_us), lat.summary(lat.gateway_us)
    lines.append("")
    lines.append(f"latency, one at a time: GetMember over gRPC p50 {d['p50_us']:,.0f} µs "
                 f"(p90 {d['p90_us']:,.0f}, p99 {d['p99_us']:,.0f}); GET /v1/me through the "
                 f"gateway p50 {g['p50_us']:,.0f} µs (p90 {g['p90_us']:,.0f}, "
                 f"p99 {g['p99_us']:,.0f})")
    lines.append(f"gateway's added latency at p50: {lat.added_p50_us:,.0f} µs, goal <= "
                 f"{ADDED_P50_GOAL_US:,.0f} µs: {'PASS' if lat.passed else 'MISS'}")
    busy = [r.label for r in f.runs if r.busy_machine]
    if busy:
        lines.append(f"\nwarning: other work took the machine during {len(busy)} of "
                     f"{len(f.runs)} runs ({', '.join(busy)}): rerun when it is quiet.")
    return "\n".join(lines)
