"""Member features, columnar.

`History` is what the service keeps per member (fed by events): registration, tier,
points, the orders of the last HISTORY_DAYS days (day and net amount), lifetime
totals, per-category first/last purchase and count, recent interactions.
`compute_features(history, today)` turns it into a `FeatureFrame`: one numpy column
per feature, every member at once, as of `today`. Days are integers (days since
1970-01-01 in the brand's time zone); -1 means "never"."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

HISTORY_DAYS = 400  # orders older than this only count in lifetime totals
NEVER = -1
# days_since_* for "never": far enough to fail any sensible recency rule.
NEVER_DAYS = 100_000


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    description: str


FEATURES: dict[str, FeatureSpec] = {
    f.name: f
    for f in [
        FeatureSpec("tier", "member tier level 0..3"),
        FeatureSpec("points_balance", "points balance"),
        FeatureSpec("days_since_registered", "days since registration (100000: unknown)"),
        FeatureSpec("orders_30d", "paid orders in the last 30 days"),
        FeatureSpec("orders_90d", "paid orders in the last 90 days"),
        FeatureSpec("orders_365d", "paid orders in the last 365 days"),
        FeatureSpec("spend_30d", "net spend in fen, last 30 days"),
        FeatureSpec("spend_90d", "net spend in fen, last 90 days"),
        FeatureSpec("spend_365d", "net spend in fen, last 365 days"),
        FeatureSpec("orders_total", "paid orders ever"),
        FeatureSpec("spend_total", "net spend in fen ever"),
        FeatureSpec("aov", "average order value in fen (0 without orders)"),
        FeatureSpec("days_since_first_order", "days since the first order (100000: never)"),
        FeatureSpec("days_since_last_order", "days since the last order (100000: never)"),
        FeatureSpec("interactions_30d", "check-ins, group joins, redemptions: last 30 days"),
        FeatureSpec("interactions_90d", "check-ins, group joins, redemptions: last 90 days"),
    ]
}


def _empty(dtype: npt.DTypeLike) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


@dataclass
class History:
    """Per-member raw data for n members, columnar. Ragged lists are CSR: member i's
    orders are ord_day[ord_offsets[i]:ord_offsets[i+1]]."""

    idx: np.ndarray  # uint32 dense member index, ascending
    registered_day: np.ndarray  # int32
    tier: np.ndarray  # int8
    points_balance: np.ndarray  # int64
    orders_total: np.ndarray  # int64 (lifetime, net of full refunds)
    spend_total: np.ndarray  # int64 fen
    first_order_day: np.ndarray  # int32, NEVER if none
    last_order_day: np.ndarray  # int32, NEVER if none
    ord_offsets: np.ndarray  # int64, n+1
    ord_day: np.ndarray  # int32
    ord_fen: np.ndarray  # int64 (net of refunds)
    cat_offsets: np.ndarray  # int64, n+1
    cat_id: np.ndarray  # int32 category id (see the category dictionary)
    cat_first_day: np.ndarray  # int32
    cat_last_day: np.ndarray  # int32
    cat_count: np.ndarray  # int32
    act_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    act_day: np.ndarray = field(default_factory=lambda: _empty(np.int32))  # interaction days
    # Order count weight per ord_* entry: +1 an order, -1 its full refund, 0 a partial
    # refund (whose ord_fen is negative). None: every entry is one order.
    ord_cnt: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.idx)


@dataclass
class FeatureFrame:
    """Every feature as a column over the same members, plus per-category stats."""

    idx: np.ndarray  # uint32
    today: int
    columns: dict[str, np.ndarray]
    cat_offsets: np.ndarray
    cat_id: np.ndarray
    cat_first_day: np.ndarray
    cat_last_day: np.ndarray
    cat_count: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)


def _window_sum(
    offsets: np.ndarray, days: np.ndarray, values: np.ndarray | None, start_day: int
) -> np.ndarray:
    """Per member: sum of values (or count) of entries with day >= start_day."""
    n = len(offsets) - 1
    if len(days) == 0:
        return np.zeros(n, dtype=np.int64)
    keep = days >= start_day
    weights = (values if values is not None else np.ones(len(days), np.int64)) * keep
    owner = np.repeat(np.arange(n), np.diff(offsets))
    return np.bincount(owner, weights=weights, minlength=n).astype(np.int64)


def compute_features(h: History, today: int) -> FeatureFrame:
    """All features of all members as of `today`, vectorised."""
    cols: dict[str, np.ndarray] = {}
    cols["tier"] = h.tier.astype(np.int64)
    cols["points_balance"] = h.points_balance.astype(np.int64)
    cols["days_since_registered"] = np.where(
        h.registered_day >= 0, today - h.registered_day.astype(np.int64), NEVER_DAYS
    )
    for days in (30, 90, 365):
        start = today - days + 1
        cols[f"orders_{days}d"] = _window_sum(h.ord_offsets, h.ord_day, h.ord_cnt, start)
        cols[f"spend_{days}d"] = _window_sum(h.ord_offsets, h.ord_day, h.ord_fen, start)
    cols["orders_total"] = h.orders_total.astype(np.int64)
    cols["spend_total"] = h.spend_total.astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["aov"] = np.where(
            h.orders_total > 0, h.spend_total / np.maximum(h.orders_total, 1), 0.0
        )
    cols["days_since_first_order"] = np.where(
        h.first_order_day >= 0, today - h.first_order_day.astype(np.int64), NEVER_DAYS
    )
    cols["days_since_last_order"] = np.where(
        h.last_order_day >= 0, today - h.last_order_day.astype(np.int64), NEVER_DAYS
    )
    for days in (30, 90):
        cols[f"interactions_{days}d"] = _window_sum(
            h.act_offsets, h.act_day, None, today - days + 1
        )
    return FeatureFrame(
        h.idx, today, cols, h.cat_offsets, h.cat_id, h.cat_first_day, h.cat_last_day, h.cat_count
    )
