"""The tier programme: at most four levels, driven by growth value from spending.

Upgrades happen at once when qualifying growth (growth earned within the evaluation
window) reaches a higher threshold; downgrades only at the periodic re-evaluation,
and only after the member has held the tier for the retention window."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

MAX_TIERS = 4


@dataclass(frozen=True, slots=True)
class Tier:
    level: int
    name: str
    growth_threshold: int
    points_multiplier_permille: int = 1000
    birthday_gift_points: int = 0
    benefits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TierProgram:
    tiers: tuple[Tier, ...]
    evaluation_window_days: int = 365
    retention_days: int = 90
    updated_at: datetime | None = None

    def tier(self, level: int) -> Tier:
        return self.tiers[min(level, len(self.tiers) - 1)]

    def qualifying_level(self, growth: int) -> int:
        level = 0
        for tier in self.tiers:
            if growth >= tier.growth_threshold:
                level = tier.level
        return level

    def window_start(self, now: datetime) -> datetime:
        return now - timedelta(days=self.evaluation_window_days)


DEFAULT_PROGRAM = TierProgram(
    tiers=(
        Tier(0, "会员 Member", 0, 1000),
        Tier(1, "银卡 Silver", 1_000, 1100, 100),
        Tier(2, "金卡 Gold", 5_000, 1250, 300),
        Tier(3, "黑金 Black Gold", 20_000, 1500, 800),
    ),
)


@dataclass(frozen=True, slots=True)
class TierChange:
    member_id: str
    from_level: int
    to_level: int
    reason: str
    at: datetime


def program_problems(program: TierProgram) -> list[tuple[str, str]]:
    """Field violations of a proposed programme (empty when valid)."""
    problems: list[tuple[str, str]] = []
    tiers = program.tiers
    if not 1 <= len(tiers) <= MAX_TIERS:
        problems.append(("program.tiers", f"a programme has 1 to {MAX_TIERS} tiers"))
        return problems
    for i, tier in enumerate(tiers):
        path = f"program.tiers[{i}]"
        if tier.level != i:
            problems.append((f"{path}.level", f"levels are 0..{len(tiers) - 1} in order"))
        if not tier.name.strip():
            problems.append((f"{path}.name", "is required"))
        if i == 0 and tier.growth_threshold != 0:
            problems.append((f"{path}.growth_threshold", "the entry tier starts at 0"))
        if i > 0 and tier.growth_threshold <= tiers[i - 1].growth_threshold:
            problems.append((f"{path}.growth_threshold", "must be above the tier below"))
        if not 0 < tier.points_multiplier_permille <= 10_000:
            problems.append((f"{path}.points_multiplier_permille", "must be 1..10000"))
        if tier.birthday_gift_points < 0:
            problems.append((f"{path}.birthday_gift_points", "must not be negative"))
    if not 1 <= program.evaluation_window_days <= 3660:
        problems.append(("program.evaluation_window_days", "must be 1..3660"))
    if not 0 <= program.retention_days <= 3660:
        problems.append(("program.retention_days", "must be 0..3660"))
    return problems


def upgrade_to(program: TierProgram, current_level: int, qualifying_growth: int) -> int | None:
    """The level to move up to now, or None."""
    target = program.qualifying_level(qualifying_growth)
    return target if target > current_level else None


def reevaluate(
    program: TierProgram,
    current_level: int,
    tier_since: datetime | None,
    qualifying_growth: int,
    now: datetime,
) -> int | None:
    """At the periodic re-evaluation: the new level, or None to keep the tier.
    Members are only moved down once the retention window since reaching the tier
    has passed; a member who qualifies higher is moved up."""
    target = program.qualifying_level(qualifying_growth)
    if current_level > len(program.tiers) - 1:
        return target  # the programme lost that tier: place the member where they qualify
    if target > current_level:
        return target
    if target < current_level:
        held_since = tier_since or now
        if now >= held_since + timedelta(days=program.retention_days):
            return target
    return None
