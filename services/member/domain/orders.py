"""Orders from every channel and their refunds. A refund reverses points and growth in
proportion to the share of the order refunded, computed on the running total so that
several partial refunds never reverse more (or less) than one full refund would."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.member.domain.errors import RuleViolation


@dataclass(frozen=True, slots=True)
class OrderItem:
    sku: str
    category: str
    quantity: int
    unit_price_fen: int


@dataclass(frozen=True, slots=True)
class Refund:
    refund_id: str
    fen: int
    points: int
    growth: int
    at: datetime


@dataclass(slots=True)
class Order:
    id: str
    member_id: str
    channel: int
    store_id: str
    guide_id: str
    items: tuple[OrderItem, ...]
    amount_fen: int
    paid_at: datetime
    points_earned: int
    growth_earned: int
    # Digest of the request that recorded it: a replay must match.
    fingerprint: str = ""
    refunds: list[Refund] = field(default_factory=list)
    # The store's version of the order as read: its replacement is guarded by it, so
    # two refunds planned on one read of the order cannot both land.
    version: int = 0

    @property
    def refunded_fen(self) -> int:
        return sum(r.fen for r in self.refunds)

    @property
    def points_reversed(self) -> int:
        return sum(r.points for r in self.refunds)

    @property
    def growth_reversed(self) -> int:
        return sum(r.growth for r in self.refunds)

    def refund(self, refund_id: str) -> Refund | None:
        return next((r for r in self.refunds if r.refund_id == refund_id), None)


def growth_for_order(amount_fen: int, growth_per_yuan: int) -> int:
    return amount_fen * growth_per_yuan // 100


def plan_refund(order: Order, refund_id: str, requested_fen: int, now: datetime) -> Refund:
    """The refund to apply: `requested_fen` (0 = all that is left), capped by what is
    left; points and growth reversed in proportion, on cumulative totals."""
    left = order.amount_fen - order.refunded_fen
    if left <= 0:
        raise RuleViolation(
            "ORDER_FULLY_REFUNDED", f"order {order.id} is already fully refunded", order_id=order.id
        )
    fen = left if requested_fen == 0 else requested_fen
    if fen > left:
        raise RuleViolation(
            "REFUND_EXCEEDS_ORDER",
            f"refund of {fen} fen exceeds the {left} fen left on the order",
            order_id=order.id,
            refundable_fen=str(left),
        )
    refunded_after = order.refunded_fen + fen
    points_total = order.points_earned * refunded_after // order.amount_fen
    growth_total = order.growth_earned * refunded_after // order.amount_fen
    return Refund(
        refund_id,
        fen,
        points_total - order.points_reversed,
        growth_total - order.growth_reversed,
        now,
    )
