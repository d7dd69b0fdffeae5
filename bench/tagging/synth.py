"""A synthetic brand with a fixed seed: N members with about 10 orders each over two
years, generated with numpy and written straight into a tagging store.

Generation is columnar: every order of every member is one entry of a few flat
arrays (owner, day, fen, categories), sorted by member and day; per-member figures
come from bincount / reduceat, and each member's history row (ROW_COLUMNS of
services.tagging.domain.history) is cut out of a handful of packed byte buffers,
never through a MemberHistory per member. The shape of the data:

- registration: 70% in the last two years, 28% before, 2% unknown;
- 18% never bought; the others' order rate is log-normal (a few heavy buyers), scaled
  to their active span, so that the brand averages 10 orders per member; 35% of the
  buyers stopped buying at some point (churn);
- orders: log-normal amounts around 80 yuan, one or two of the 30 categories (half
  of them the member's favourite, the rest Zipf-popular), 3% fully and 1% partly
  refunded;
- interactions: 70% of members, about 2.5 each in the kept window;
- tier by lifetime spend (top 50% / 15% / 3%), points a random share of spend.

Rows are exactly what the event consumer would have built (MemberHistory.to_row):
orders and interactions of the last HISTORY_DAYS days, lifetime totals, lifetime
per-category first/last/count sorted by category id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from bench.tagging.brand import CATEGORIES, MANUAL_TAGS
from services.tagging.domain.features import HISTORY_DAYS, NEVER

SPAN_DAYS = 730  # two years of orders
ORDERS_PER_MEMBER = 10
_CAT_SLOTS = 32  # > len(CATEGORIES): (member, category) keys as member * 32 + category


@dataclass
class Brand:
    """Every member's history, columnar (CSR for the ragged parts)."""

    n: int
    today: int
    orders: int  # paid orders over the two years (all of them, kept window or not)
    registered_day: np.ndarray
    tier: np.ndarray
    points_balance: np.ndarray
    orders_total: np.ndarray
    spend_total: np.ndarray
    first_order_day: np.ndarray
    last_order_day: np.ndarray
    ord_offsets: np.ndarray  # the kept window: orders and refund entries
    ord_day: np.ndarray
    ord_fen: np.ndarray
    ord_cnt: np.ndarray
    cat_offsets: np.ndarray
    cat: np.ndarray  # (entries, 4) int32: category id, first day, last day, count
    act_offsets: np.ndarray
    act_day: np.ndarray
    manual: dict[str, np.ndarray]  # tag -> member indexes

    def member_id(self, idx: int) -> str:
        return member_id(idx)


def member_id(idx: int) -> str:
    """A member id shaped like the member service's (m + 24 hex digits), stable."""
    return f"m{0x19A4E000000 + idx // 7:012x}{(idx * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFF:012x}"


def _offsets(owner: np.ndarray, n: int) -> np.ndarray:
    return np.searchsorted(owner, np.arange(n + 1)).astype(np.int64)


def generate(n: int, today: int, seed: int = 20261122) -> Brand:
    rng = np.random.default_rng(seed)
    members = np.arange(n, dtype=np.int64)
    # Registration.
    u = rng.random(n)
    reg = np.where(
        u < 0.70,
        today - rng.integers(0, SPAN_DAYS, n),
        np.where(u < 0.98, today - SPAN_DAYS - rng.integers(1, 1500, n), NEVER),
    ).astype(np.int64)
    # Active span and order counts.
    start = np.maximum(np.where(reg >= 0, reg, today - SPAN_DAYS), today - SPAN_DAYS)
    churned = rng.random(n) < 0.35
    end = np.where(churned, start + ((today - start) * rng.random(n)).astype(np.int64), today)
    active_days = end - start + 1
    rate = rng.lognormal(0.0, 1.1, n) * (rng.random(n) >= 0.18) * active_days
    rate *= ORDERS_PER_MEMBER * n / max(rate.sum(), 1.0)
    k = rng.poisson(rate)
    # Orders, sorted by member then day.
    owner = np.repeat(members, k)
    m = len(owner)
    day = start[owner] + (rng.random(m) * active_days[owner]).astype(np.int64)
    order = np.argsort(owner * 1024 + (day - (today - SPAN_DAYS)), kind="stable")
    day = day[order]  # owner is already sorted and unchanged by this permutation
    fen = np.maximum(100, np.round(rng.lognormal(np.log(8000), 0.75, m))).astype(np.int64)
    # Categories: one or two per order.
    popularity = 1.0 / np.arange(1, len(CATEGORIES) + 1) ** 0.8
    popularity /= popularity.sum()
    favourite = rng.choice(len(CATEGORIES), n, p=popularity)
    primary = np.where(
        rng.random(m) < 0.5, favourite[owner], rng.choice(len(CATEGORIES), m, p=popularity)
    )
    second = np.where(rng.random(m) < 0.35, rng.choice(len(CATEGORIES), m, p=popularity), -1)
    has2 = (second >= 0) & (second != primary)
    e_owner = np.concatenate([owner, owner[has2]])
    e_cat = np.concatenate([primary, second[has2]])
    e_day = np.concatenate([day, day[has2]])
    key = e_owner * _CAT_SLOTS + e_cat
    by_key = np.argsort(key, kind="stable")
    skey, sday = key[by_key], e_day[by_key]
    starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    c_count = np.diff(np.r_[starts, len(skey)])
    cat = np.empty((len(starts), 4), dtype=np.int32)
    cat[:, 0] = skey[starts] % _CAT_SLOTS
    cat[:, 1] = np.minimum.reduceat(sday, starts)
    cat[:, 2] = np.maximum.reduceat(sday, starts)
    cat[:, 3] = c_count
    cat_offsets = _offsets(skey[starts] // _CAT_SLOTS, n)
    # Refunds.
    full = rng.random(m) < 0.03
    partial = ~full & (rng.random(m) < 0.01)
    part_fen = (fen * rng.uniform(0.1, 0.9, m)).astype(np.int64)
    refunded = np.where(full, fen, np.where(partial, part_fen, 0))
    orders_total = k - np.bincount(owner, weights=full, minlength=n).astype(np.int64)
    spend_total = np.bincount(owner, weights=fen - refunded, minlength=n).astype(np.int64)
    bought = k > 0
    first_idx = np.searchsorted(owner, members)
    first_day = np.where(bought, day[np.minimum(first_idx, max(m - 1, 0))], NEVER)
    last_idx = np.searchsorted(owner, members, side="right") - 1
    last_day = np.where(bought, day[np.maximum(last_idx, 0)], NEVER)
    # The kept window: each order (+1), then its refund (-1 full, 0 partial).
    oldest = today - HISTORY_DAYS
    ref = full | partial
    w_owner = np.concatenate([owner, owner[ref]])
    w_day = np.concatenate([day, day[ref]])
    w_fen = np.concatenate([fen, -refunded[ref]])
    w_cnt = np.concatenate([np.ones(m, np.int8), np.where(full[ref], -1, 0).astype(np.int8)])
    w_kind = np.concatenate([np.zeros(m, np.int64), np.ones(int(ref.sum()), np.int64)])
    keep = w_day >= oldest
    w_owner, w_day, w_fen, w_cnt, w_kind = (
        a[keep] for a in (w_owner, w_day, w_fen, w_cnt, w_kind)
    )
    wo = np.argsort((w_owner * 1024 + (w_day - oldest)) * 2 + w_kind, kind="stable")
    w_owner, w_day, w_fen, w_cnt = w_owner[wo], w_day[wo], w_fen[wo], w_cnt[wo]
    # Interactions in the kept window.
    a = rng.poisson(2.5, n) * (rng.random(n) < 0.7)
    a_owner = np.repeat(members, a)
    a_lo = np.maximum(start, oldest)[a_owner]
    a_day = a_lo + (rng.random(len(a_owner)) * (today - a_lo + 1)).astype(np.int64)
    a_day = a_day[np.argsort(a_owner * 1024 + (a_day - oldest), kind="stable")]
    # Tier and points.
    cuts = np.quantile(spend_total, [0.50, 0.85, 0.97])
    tier = (spend_total >= max(cuts[0], 1)).astype(np.int8)
    tier += (spend_total >= cuts[1]).astype(np.int8) + (spend_total >= cuts[2]).astype(np.int8)
    points = (np.maximum(spend_total, 0) // 100 * rng.random(n)).astype(np.int64)
    manual = {}
    for tag, share in MANUAL_TAGS.items():
        if tag == "vip_group":  # the best customers, mostly
            score = spend_total * rng.uniform(0.5, 1.5, n)
            chosen = np.argsort(-score, kind="stable")[: int(n * share)]
        else:
            chosen = np.flatnonzero(rng.random(n) < share)
        manual[tag] = np.sort(chosen)
    return Brand(
        n=n,
        today=today,
        orders=m,
        registered_day=reg,
        tier=tier,
        points_balance=points,
        orders_total=orders_total,
        spend_total=spend_total,
        first_order_day=first_day.astype(np.int64),
        last_order_day=last_day.astype(np.int64),
        ord_offsets=_offsets(w_owner, n),
        ord_day=w_day,
        ord_fen=w_fen,
        ord_cnt=w_cnt,
        cat_offsets=cat_offsets,
        cat=cat,
        act_offsets=_offsets(a_owner, n),
        act_day=a_day,
        manual=manual,
    )


class RowCutter:
    """History rows of any member range, cut from packed buffers built once."""

    def __init__(self, b: Brand) -> None:
        self.b = b
        self._day = b.ord_day.astype("<i4").tobytes()
        self._fen = b.ord_fen.astype("<i8").tobytes()
        self._cnt = b.ord_cnt.astype("<i1").tobytes()
        self._cat = b.cat.astype("<i4").tobytes()
        self._act = b.act_day.astype("<i4").tobytes()

    @staticmethod
    def _slices(buf: bytes, offsets: np.ndarray, lo: int, hi: int, size: int) -> list[bytes]:
        edges = (offsets[lo : hi + 1] * size).tolist()
        return [buf[s:e] for s, e in itertools.pairwise(edges)]

    def rows(self, lo: int, hi: int) -> list[tuple]:
        b = self.b
        scalars = [
            list(range(lo, hi)),
            *(
                a[lo:hi].tolist()
                for a in (
                    b.registered_day,
                    b.tier,
                    b.points_balance,
                    b.orders_total,
                    b.spend_total,
                    b.first_order_day,
                    b.last_order_day,
                )
            ),
        ]
        blobs = [
            self._slices(self._day, b.ord_offsets, lo, hi, 4),
            self._slices(self._fen, b.ord_offsets, lo, hi, 8),
            self._slices(self._cnt, b.ord_offsets, lo, hi, 1),
            self._slices(self._cat, b.cat_offsets, lo, hi, 16),
            self._slices(self._act, b.act_offsets, lo, hi, 4),
        ]
        return list(zip(*scalars, *blobs, strict=True))


def summary(b: Brand) -> dict:
    return {
        "members": b.n,
        "orders_two_years": int(b.orders),
        "orders_per_member": round(b.orders / max(b.n, 1), 2),
        "kept_order_entries": len(b.ord_day),
        "category_entries": len(b.cat),
        "interactions": len(b.act_day),
        "never_bought": int((b.first_order_day < 0).sum()),
        "manual_tags": {t: len(v) for t, v in b.manual.items()},
    }
