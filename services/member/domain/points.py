"""The points ledger: append-only entries, and earned lots that each carry their own
expiry. Spending takes the soonest-expiring lots first. The balance is always the
sum of the entries and the sum of the lots' remaining points, and never negative."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum

from services.member.domain.errors import RuleViolation


class PointsEntryKind(IntEnum):
    UNSPECIFIED = 0
    EARN = 1
    REDEEM = 2
    EXPIRE = 3
    ADJUST = 4
    REVERSE = 5
    GIFT = 6


@dataclass(frozen=True, slots=True)
class Lot:
    id: str
    member_id: str
    earned_at: datetime
    expires_at: datetime
    amount: int
    remaining: int
    order_id: str = ""
    announced: bool = False


@dataclass(frozen=True, slots=True)
class PointsEntry:
    id: str
    member_id: str
    kind: PointsEntryKind
    delta: int
    balance_after: int
    at: datetime
    reason: str = ""
    order_id: str = ""
    expires_at: datetime | None = None
    # (lot id, points taken) for entries that spend.
    taken: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class PointsMove:
    """What one ledger operation does: the lots it creates or changes and its entry."""

    lots: tuple[Lot, ...]
    entry: PointsEntry

    @property
    def balance(self) -> int:
        return self.entry.balance_after


def grant(
    *,
    entry_id: str,
    member_id: str,
    balance: int,
    points: int,
    now: datetime,
    expires_at: datetime,
    kind: PointsEntryKind = PointsEntryKind.EARN,
    reason: str = "",
    order_id: str = "",
    earned_at: datetime | None = None,
) -> PointsMove:
    """A new lot of `points`, earned at `earned_at` (default: now; an order's points
    are earned when it was paid), and its entry, written now."""
    if points <= 0:
        raise ValueError("a grant is positive")
    lot = Lot(entry_id, member_id, earned_at or now, expires_at, points, points, order_id)
    entry = PointsEntry(
        entry_id, member_id, kind, points, balance + points, now, reason, order_id, expires_at
    )
    return PointsMove((lot,), entry)


def _spend_order(lots: list[Lot], prefer_order: str) -> list[Lot]:
    # An order's own lot first (for reversals), then soonest expiry, then oldest.
    return sorted(
        (lot for lot in lots if lot.remaining > 0),
        key=lambda lot: (
            lot.order_id != prefer_order or not prefer_order,
            lot.expires_at,
            lot.earned_at,
            lot.id,
        ),
    )


def spend(
    *,
    entry_id: str,
    member_id: str,
    lots: list[Lot],
    points: int,
    now: datetime,
    kind: PointsEntryKind,
    reason: str = "",
    order_id: str = "",
    allow_partial: bool = False,
) -> PointsMove:
    """Take `points` from the open lots, soonest-expiring first. Without
    `allow_partial`, not enough points is a RuleViolation; with it, takes what there is."""
    if points <= 0:
        raise ValueError("a spend is positive")
    open_lots = [lot for lot in lots if lot.expires_at > now]
    balance = sum(lot.remaining for lot in lots)
    available = sum(lot.remaining for lot in open_lots)
    if available < points and not allow_partial:
        raise RuleViolation(
            "INSUFFICIENT_POINTS",
            f"the member has {available} points, {points} needed",
            available=str(available),
            needed=str(points),
        )
    want = min(points, available)
    changed: list[Lot] = []
    taken: list[tuple[str, int]] = []
    for lot in _spend_order(open_lots, order_id if kind is PointsEntryKind.REVERSE else ""):
        if want == 0:
            break
        take = min(lot.remaining, want)
        changed.append(replace(lot, remaining=lot.remaining - take))
        taken.append((lot.id, take))
        want -= take
    delta = -sum(t for _, t in taken)
    entry = PointsEntry(
        entry_id, member_id, kind, delta, balance + delta, now, reason, order_id, None, tuple(taken)
    )
    return PointsMove(tuple(changed), entry)


def expire(*, entry_id: str, member_id: str, lots: list[Lot], now: datetime) -> PointsMove | None:
    """Zero every lot whose expiry has passed; one EXPIRE entry for their sum."""
    due = [lot for lot in lots if lot.remaining > 0 and lot.expires_at <= now]
    if not due:
        return None
    balance = sum(lot.remaining for lot in lots)
    total = sum(lot.remaining for lot in due)
    changed = tuple(replace(lot, remaining=0) for lot in due)
    entry = PointsEntry(
        entry_id,
        member_id,
        PointsEntryKind.EXPIRE,
        -total,
        balance - total,
        now,
        "expired",
        "",
        None,
        tuple((lot.id, lot.remaining) for lot in due),
    )
    return PointsMove(changed, entry)


def expire_stale_grant(grant: PointsMove, *, entry_id: str, now: datetime) -> PointsMove | None:
    """A grant whose lot is already past its expiry when it is written (the points of an
    order paid long ago, recorded late) expires at once: an EXPIRE entry right after
    the grant's, so the ledger shows both and the balance never holds points that could
    not be spent. None when the lot is still valid."""
    (lot,) = grant.lots
    if lot.expires_at > now:
        return None
    entry = PointsEntry(
        entry_id,
        lot.member_id,
        PointsEntryKind.EXPIRE,
        -lot.remaining,
        grant.balance - lot.remaining,
        now,
        "expired",
        lot.order_id,
        None,
        ((lot.id, lot.remaining),),
    )
    return PointsMove((replace(lot, remaining=0),), entry)


def points_for_order(amount_fen: int, points_per_yuan: int, multiplier_permille: int) -> int:
    """Points earned: whole yuan x rate x tier multiplier, rounded down."""
    return amount_fen * points_per_yuan * multiplier_permille // 100_000
