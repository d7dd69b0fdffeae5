"""Graduation (升级): members of a segment move from first-level groups into a pool
of second-level, top, VIP or KOC groups. Which pools may receive graduates, and where
a dry run says each member would go (the pool's fill order, capacity kept, overflow
groups numbered on from the pool's last). No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.community.domain.groups import DEFAULT_CAPACITY, FIRST_LEVEL
from services.community.domain.routing import BALANCE, pool_group_id

VIP, KOC = 7, 8  # GroupKind
SECOND, TOP = 2, 3  # GroupLevel
Doc = dict[str, Any]


def is_graduation_target(kind: int, level: int) -> bool:
    """Graduates go up: to second-level or top groups, or to VIP or KOC groups."""
    return level in (SECOND, TOP) or kind in (VIP, KOC)


def first_level_groups(groups: list[Doc], target_pool: str) -> list[str]:
    """The active first-level groups (outside the target pool) a member leaves."""
    return sorted(g["_id"] for g in groups if g["state"] == "active"
                  and g["level"] == FIRST_LEVEL and g["pool_id"] != target_pool)


@dataclass
class Seat:
    group_id: str
    members: int
    capacity: int
    sequence: int
    opened: bool = False

    @property
    def free(self) -> bool:
        return self.members < self.capacity


@dataclass(frozen=True)
class Planned:
    member_id: str
    group_id: str  # "" when the pool is full and has no template
    opens_group: bool


class PoolPlan:
    """Where members would go in a pool, one after another, as routing would send
    them: FILL_FIRST the lowest number with room, BALANCE the fewest members; when
    no group has room, the next group from the template."""

    def __init__(self, rule: Doc, open_groups: list[Doc]) -> None:
        self.rule = rule
        self.seats = [Seat(g["_id"], g["member_count"], g["capacity"], g["sequence"])
                      for g in open_groups]
        self.last_sequence = int(rule["last_sequence"])

    def _choose(self) -> Seat | None:
        free = [s for s in self.seats if s.free]
        if not free:
            return None
        if self.rule["fill_strategy"] == BALANCE:
            return min(free, key=lambda s: (s.members, s.sequence))
        return min(free, key=lambda s: s.sequence)

    def next_group(self) -> str | None:
        """The group the next member would join: "" a new one from the template,
        None when the pool is full and has no template."""
        seat = self._choose()
        if seat is not None:
            return seat.group_id
        return "" if self.rule.get("template") else None

    def place(self, member_id: str) -> Planned:
        seat = self._choose()
        if seat is None:
            if not self.rule.get("template"):
                return Planned(member_id, "", False)
            self.last_sequence += 1
            capacity = self.rule["template"].get("capacity") or DEFAULT_CAPACITY
            seat = Seat(pool_group_id(self.rule["_id"], self.last_sequence), 0, capacity,
                        self.last_sequence, opened=True)
            self.seats.append(seat)
        opens = seat.opened and seat.members == 0
        seat.members += 1
        return Planned(member_id, seat.group_id, opens)
