"""One member's raw history as the event consumer keeps it, and the columnar
assembly of many members' rows into a `History` for a scoring run.

A member row is a few scalars plus packed little-endian arrays (orders of the last
HISTORY_DAYS days, category stats, interaction days), so that a run can load a
million rows and assemble them with a handful of numpy calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.tagging.domain.features import HISTORY_DAYS, NEVER, History

ROW_COLUMNS = (
    "idx",
    "registered_day",
    "tier",
    "points_balance",
    "orders_total",
    "spend_total",
    "first_order_day",
    "last_order_day",
    "ord_day",
    "ord_fen",
    "ord_cnt",
    "cat",
    "act_day",
)


@dataclass
class MemberHistory:
    idx: int
    registered_day: int = NEVER
    tier: int = 0
    points_balance: int = 0
    orders_total: int = 0
    spend_total: int = 0
    first_order_day: int = NEVER
    last_order_day: int = NEVER
    orders: list[tuple[int, int, int]] = field(default_factory=list)  # (day, fen, count)
    # category id -> [first_day, last_day, count]
    categories: dict[int, list[int]] = field(default_factory=dict)
    interactions: list[int] = field(default_factory=list)  # days

    # -- applying facts --
    def order_paid(self, day: int, fen: int, category_ids: set[int], today: int) -> None:
        self.orders.append((day, fen, 1))
        self.orders_total += 1
        self.spend_total += fen
        self.first_order_day = day if self.first_order_day < 0 else min(self.first_order_day, day)
        self.last_order_day = max(self.last_order_day, day)
        for cat in category_ids:
            stats = self.categories.get(cat)
            if stats is None:
                self.categories[cat] = [day, day, 1]
            else:
                stats[0], stats[1], stats[2] = min(stats[0], day), max(stats[1], day), stats[2] + 1
        self.trim(today)

    def order_refunded(self, paid_day: int, fen: int, fully: bool, today: int) -> None:
        self.orders.append((paid_day, -fen, -1 if fully else 0))
        self.spend_total -= fen
        if fully:
            self.orders_total = max(0, self.orders_total - 1)
        self.trim(today)

    def interacted(self, day: int, today: int) -> None:
        self.interactions.append(day)
        self.trim(today)

    def absorb(self, other: MemberHistory, today: int) -> None:
        """Takes in the history of another record of the same person (a member merge):
        orders, spending, categories and interactions add up with their own days; the
        first registration and order are the earlier, the tier the higher. The points
        balance adds up too (the member service moved the lots)."""
        if other.registered_day != NEVER:
            self.registered_day = (
                other.registered_day
                if self.registered_day == NEVER
                else min(self.registered_day, other.registered_day)
            )
        self.tier = max(self.tier, other.tier)
        self.points_balance += other.points_balance
        self.orders_total += other.orders_total
        self.spend_total += other.spend_total
        if other.first_order_day != NEVER:
            self.first_order_day = (
                other.first_order_day
                if self.first_order_day == NEVER
                else min(self.first_order_day, other.first_order_day)
            )
        self.last_order_day = max(self.last_order_day, other.last_order_day)
        self.orders = sorted([*self.orders, *other.orders])
        for cat, (first, last, count) in other.categories.items():
            mine = self.categories.get(cat)
            if mine is None:
                self.categories[cat] = [first, last, count]
            else:
                mine[0], mine[1], mine[2] = min(mine[0], first), max(mine[1], last), mine[2] + count
        self.interactions = sorted([*self.interactions, *other.interactions])
        self.trim(today)

    def trim(self, today: int) -> None:
        oldest = today - HISTORY_DAYS
        self.orders = [o for o in self.orders if o[0] >= oldest]
        self.interactions = [d for d in self.interactions if d >= oldest]

    # -- rows --
    def to_row(self) -> tuple[Any, ...]:
        orders = np.array(self.orders or np.zeros((0, 3)), dtype=np.int64).reshape(-1, 3)
        cats = np.array(
            [[c, *v] for c, v in sorted(self.categories.items())] or np.zeros((0, 4)),
            dtype=np.int32,
        ).reshape(-1, 4)
        return (
            self.idx,
            self.registered_day,
            self.tier,
            self.points_balance,
            self.orders_total,
            self.spend_total,
            self.first_order_day,
            self.last_order_day,
            orders[:, 0].astype("<i4").tobytes(),
            orders[:, 1].astype("<i8").tobytes(),
            orders[:, 2].astype("<i1").tobytes(),
            cats.astype("<i4").tobytes(),
            np.array(self.interactions, dtype="<i4").tobytes(),
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> MemberHistory:
        (idx, reg, tier, points, n_orders, spend, first, last, o_day, o_fen, o_cnt, cat, act) = row
        days = np.frombuffer(o_day, "<i4").tolist()
        fens = np.frombuffer(o_fen, "<i8").tolist()
        cnts = np.frombuffer(o_cnt, "<i1").tolist()
        cats = np.frombuffer(cat, "<i4").reshape(-1, 4).tolist()
        return cls(
            idx,
            reg,
            tier,
            points,
            n_orders,
            spend,
            first,
            last,
            list(zip(days, fens, cnts, strict=True)),
            {c[0]: c[1:] for c in cats},
            np.frombuffer(act, "<i4").tolist(),
        )


def _csr(blobs: list[bytes], dtype: str, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    itemsize = np.dtype(dtype).itemsize * width
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // itemsize
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(blobs), dtype=dtype)
    return offsets, data.reshape(-1, width) if width > 1 else data


def assemble(rows: list[tuple[Any, ...]]) -> History:
    """Rows (ROW_COLUMNS order, ascending idx) -> one columnar History."""
    if not rows:
        cols: list[Any] = [[] for _ in ROW_COLUMNS]
    else:
        cols = list(zip(*rows, strict=True))
    scalars = [np.array(c, dtype=np.int64) for c in cols[:8]]
    ord_offsets, ord_day = _csr(list(cols[8]), "<i4")
    _, ord_fen = _csr(list(cols[9]), "<i8")
    _, ord_cnt = _csr(list(cols[10]), "<i1")
    cat_offsets, cat = _csr(list(cols[11]), "<i4", 4)
    act_offsets, act_day = _csr(list(cols[12]), "<i4")
    cat = cat.reshape(-1, 4)
    return History(
        idx=scalars[0].astype(np.uint32),
        registered_day=scalars[1].astype(np.int32),
        tier=scalars[2].astype(np.int8),
        points_balance=scalars[3],
        orders_total=scalars[4],
        spend_total=scalars[5],
        first_order_day=scalars[6].astype(np.int32),
        last_order_day=scalars[7].astype(np.int32),
        ord_offsets=ord_offsets,
        ord_day=ord_day.astype(np.int32),
        ord_fen=ord_fen.astype(np.int64),
        cat_offsets=cat_offsets,
        cat_id=cat[:, 0].copy(),
        cat_first_day=cat[:, 1].copy(),
        cat_last_day=cat[:, 2].copy(),
        cat_count=cat[:, 3].copy(),
        act_offsets=act_offsets,
        act_day=act_day.astype(np.int32),
        ord_cnt=ord_cnt.astype(np.int64),
    )
