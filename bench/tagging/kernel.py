"""The scoring step two ways over the same History columns: the engine's (what a
scoring run does between loading rows and building bitmaps) and a hand-written numpy
kernel computing the same masks, the throughput baseline.

Engine step: compute_features, PopulationStats.of, learned_cycles,
per_member_scores (lifecycle, repurchase due), population_scores (RFM, quadrant),
compute_tags (every rule, through the expression evaluator), with the manual tag
masks given. Kernel: the same arithmetic written directly: one member-owner array per
ragged column, all order windows in one bincount (age buckets), per-category
last-day/count/due as (category x member) tables built by one scatter each, the
histograms and cuts of population.py, and each rule of brand.RULES as a plain numpy
expression over the integer columns. `compare` proves both give the same members
for every tag."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bench.tagging.brand import CATEGORIES, RULES
from services.tagging.domain import expressions as ex
from services.tagging.domain import population as pop
from services.tagging.domain import scoring as sc
from services.tagging.domain.features import NEVER_DAYS, History, compute_features
from services.tagging.domain.scores import LIFECYCLE, QUADRANTS, RFM_CLASSES, LifecycleThresholds
from services.tagging.domain.scoring import in_dependency_order

Masks = dict[str, np.ndarray]


def engine_step(
    h: History,
    today: int,
    manual: Masks,
    categories: dict[str, int],
    thresholds: LifecycleThresholds,
    rules: list[tuple[str, ex.Expr]],
) -> Masks:
    """As ScoringRunner._score after engine.frame_for, for one partition."""
    frame = compute_features(h, today)
    stats = pop.PopulationStats.of(frame)
    cycles = pop.learned_cycles(stats)
    given = dict(manual)
    given.update(sc.per_member_scores(frame, cycles, categories, thresholds))
    given.update(sc.population_scores(frame, stats))
    return sc.compute_tags(frame, rules, given, categories)


def parsed_rules() -> list[tuple[str, ex.Expr]]:
    return in_dependency_order({k: ex.parse(v) for k, v in RULES}, ex.referenced_tags)


# The categories the rules read, each a row of the kernel's (category x member) tables.
RULE_CATEGORIES = sorted(
    {c for _, source in RULES for c in ex.referenced_categories(ex.parse(source))},
    key=CATEGORIES.index,
)


class _View:
    """What a hand-written rule reads: integer feature columns, tag masks so far, and
    (rule category x member) tables of last purchase day and count."""

    def __init__(self, today: int, f: dict, tags: Masks, last: np.ndarray, count: np.ndarray):
        self.today, self.f, self.tag = today, f, tags
        self._last, self._count = last, count

    def bought(self, cat: str, days: int) -> np.ndarray:
        last = self._last[RULE_CATEGORIES.index(cat)]
        return (last >= 0) & (self.today - last < days)

    def cat_orders(self, cat: str) -> np.ndarray:
        return self._count[RULE_CATEGORIES.index(cat)]

    def since_bought(self, cat: str) -> np.ndarray:
        last = self._last[RULE_CATEGORIES.index(cat)]
        return np.where(last >= 0, self.today - last, NEVER_DAYS)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a))
    np.divide(a, b, out=out, where=b != 0)
    return out


# brand.RULES, by hand.
KERNEL_RULES: dict[str, Callable[[_View], np.ndarray]] = {
    "big_spender": lambda v: v.f["spend_365d"] >= 200000,
    "frequent": lambda v: v.f["orders_90d"] >= 3,
    "recent_buyer": lambda v: v.f["days_since_last_order"] < 14,
    "lapsed_regular": lambda v: (v.f["orders_total"] >= 4) & (v.f["days_since_last_order"] >= 120),
    "high_aov": lambda v: (v.f["aov"] >= 15000) & (v.f["orders_total"] >= 3),
    "coffee_lover": lambda v: v.bought("coffee", 60) & (v.cat_orders("coffee") >= 3),
    "new_parent": lambda v: v.tag["has_kids"] & v.bought("baby", 180),
    "fresh_regular": lambda v: v.bought("fresh", 30) & (v.f["orders_30d"] >= 2),
    "points_rich": lambda v: v.f["points_balance"] >= 3000,
    "vip_candidate": lambda v: (
        (v.f["tier"] >= 2) & (v.f["spend_90d"] >= 50000) & ~v.tag["vip_group"]
    ),
    "engaged": lambda v: v.f["interactions_30d"] >= 1,
    "silent_buyer": lambda v: (v.f["orders_90d"] >= 1) & (v.f["interactions_90d"] == 0),
    "snack_fan": lambda v: v.since_bought("snacks") < 45,
    "wine_buyer": lambda v: (
        v.bought("wine", 365) & (_ratio(v.f["spend_365d"], v.f["orders_365d"]) >= 10000)
    ),
    "beauty_repeat": lambda v: (v.cat_orders("beauty") >= 2) & v.bought("beauty", 90),
    "churn_risk": lambda v: v.tag["lifecycle:sleeping"] & (v.f["spend_total"] >= 50000),
    "win_back": lambda v: v.tag["rfm:important_winback"] | (
        v.tag["lifecycle:churned"] & (v.f["orders_total"] >= 5)
    ),
    "loyal": lambda v: (v.f["days_since_first_order"] >= 365) & (v.f["orders_365d"] >= 6),
    "accelerating": lambda v: (v.f["spend_30d"] * 3 > v.f["spend_90d"]) & (v.f["orders_90d"] >= 2),
    "premium_family": lambda v: v.tag["new_parent"] & v.tag["big_spender"],
}


def _since(day: np.ndarray, today: int) -> np.ndarray:
    return np.where(day >= 0, today - day.astype(np.int64), NEVER_DAYS)


def lifecycle_stage(since_reg: np.ndarray, since_first: np.ndarray, since_last: np.ndarray,
                    buyer: np.ndarray, t: LifecycleThresholds) -> np.ndarray:
    """The LIFECYCLE code per member, written out by hand (first match wins: assigned
    in reverse order of precedence). New: the first known activity (registration or
    first order, the earlier; an unknown one is NEVER_DAYS ago) less than new_days ago."""
    stage = np.full(len(since_last), 4, dtype=np.int8)
    first_seen = np.where(since_reg >= NEVER_DAYS, since_first,
                          np.where(since_first >= NEVER_DAYS, since_reg,
                                   np.maximum(since_reg, since_first)))
    stage[since_last < t.sleeping_days] = 3
    stage[since_last < t.active_days] = 2
    stage[~buyer] = 5
    stage[first_seen < t.new_days] = 1
    return stage


def kernel_step(h: History, today: int, manual: Masks, t: LifecycleThresholds) -> Masks:
    n = len(h.idx)
    members = np.arange(n)
    # Order windows: one bincount per value over (member, age bucket).
    owner = np.repeat(members, np.diff(h.ord_offsets))
    age = today - h.ord_day
    slot = owner * 4 + (age >= 30) + (age >= 90).astype(np.int64) + (age >= 365)
    cnt = h.ord_cnt if h.ord_cnt is not None else np.ones(len(age), np.int64)
    c4 = np.bincount(slot, weights=cnt, minlength=4 * n).reshape(n, 4).astype(np.int64)
    f4 = np.bincount(slot, weights=h.ord_fen, minlength=4 * n).reshape(n, 4).astype(np.int64)
    c4, f4 = np.cumsum(c4, axis=1), np.cumsum(f4, axis=1)
    a_owner = np.repeat(members, np.diff(h.act_offsets))
    a_age = today - h.act_day
    a3 = np.bincount(a_owner * 3 + (a_age >= 30) + (a_age >= 90).astype(np.int64), minlength=3 * n)
    a3 = np.cumsum(a3.reshape(n, 3), axis=1)
    orders_total, spend_total = h.orders_total, h.spend_total
    f = {
        "tier": h.tier.astype(np.int64),
        "points_balance": h.points_balance,
        "days_since_registered": _since(h.registered_day, today),
        "orders_30d": c4[:, 0],
        "orders_90d": c4[:, 1],
        "orders_365d": c4[:, 2],
        "spend_30d": f4[:, 0],
        "spend_90d": f4[:, 1],
        "spend_365d": f4[:, 2],
        "orders_total": orders_total,
        "spend_total": spend_total,
        "aov": np.where(orders_total > 0, spend_total / np.maximum(orders_total, 1), 0.0),
        "days_since_first_order": _since(h.first_order_day, today),
        "days_since_last_order": _since(h.last_order_day, today),
        "interactions_30d": a3[:, 0],
        "interactions_90d": a3[:, 1],
    }
    # (rule category x member) tables: one scatter each.
    k = len(CATEGORIES)
    c_owner = np.repeat(members, np.diff(h.cat_offsets))
    row_of = np.full(k, -1, dtype=np.int64)
    row_of[[CATEGORIES.index(c) for c in RULE_CATEGORIES]] = np.arange(len(RULE_CATEGORIES))
    c_row = row_of[h.cat_id]
    used = c_row >= 0
    last = np.full((len(RULE_CATEGORIES), n), -1, dtype=np.int32)
    last[c_row[used], c_owner[used]] = h.cat_last_day[used]
    count = np.zeros((len(RULE_CATEGORIES), n), dtype=np.int32)
    count[c_row[used], c_owner[used]] = h.cat_count[used]
    # Population statistics: RFM histograms, quadrant medians, repurchase gaps.
    buyer = orders_total > 0
    rec = np.clip(f["days_since_last_order"], 0, pop.MAX_DAYS - 1)
    frq = np.clip(f["orders_365d"], 0, pop.MAX_ORDERS - 1)
    yuan = np.maximum(f["spend_365d"], 0) / 100.0
    mon = np.clip(np.floor(np.log1p(yuan) * 20).astype(np.int64), 0, pop.MONEY_BUCKETS - 1)
    inter = f["interactions_90d"]
    h_rec = np.bincount(rec[buyer], minlength=pop.MAX_DAYS)
    h_frq = np.bincount(frq[buyer], minlength=pop.MAX_ORDERS)
    h_mon = np.bincount(mon[buyer], minlength=pop.MONEY_BUCKETS)
    h_int = np.bincount(np.clip(inter[inter >= 1], 0, pop.MAX_INTERACTIONS - 1),
                        minlength=pop.MAX_INTERACTIONS)
    first_c = h.cat_first_day.astype(np.int64)
    last_c = h.cat_last_day.astype(np.int64)
    count_c = h.cat_count.astype(np.int64)
    sel = (count_c >= 2) & (first_c >= 0) & (last_c > first_c)
    steps = np.maximum(count_c[sel] - 1, 1)
    gap = np.maximum(1, (2 * (last_c[sel] - first_c[sel]) + steps) // (2 * steps))
    gap = np.minimum(gap, pop.MAX_GAP - 1)
    gaps = np.bincount(h.cat_id[sel].astype(np.int64) * pop.MAX_GAP + gap,
                       minlength=k * pop.MAX_GAP).reshape(k, pop.MAX_GAP)
    cycle = np.zeros(k, dtype=np.int64)  # rounded learned cycle, 0: none
    for c in range(k):
        if gaps[c].sum() >= 20:
            cycle[c] = max(1, int(np.floor(pop.median(gaps[c]) + 0.5)))
    masks: Masks = dict(manual)
    # Lifecycle (first match wins: assign in reverse order of precedence).
    stage = lifecycle_stage(f["days_since_registered"], f["days_since_first_order"],
                            f["days_since_last_order"], buyer, t)
    for code, (key, _) in LIFECYCLE.items():
        masks[sc.LIFECYCLE_PREFIX + key] = stage == code
    # Repurchase due.
    cyc = cycle[h.cat_id]
    due = (cyc > 0) & (count_c > 0) & (last_c >= 0) & (today >= last_c + cyc)
    due_t = np.zeros((k, n), dtype=bool)
    due_t[h.cat_id[due], c_owner[due]] = True
    for c, name in enumerate(CATEGORIES):
        masks[sc.REPURCHASE_PREFIX + name] = due_t[c]
    # RFM.
    n_pop = int(h_rec.sum())
    highs = []
    for hist, table, slot_ in (
        (h_rec, pop.quintile_table(h_rec[::-1])[::-1], rec),
        (h_frq, pop.quintile_table(h_frq), frq),
        (h_mon, pop.quintile_table(h_mon), mon),
    ):
        score = np.where(buyer, table[slot_], 0).astype(np.int64)
        highs.append(score * n_pop >= int((hist * table).sum()) if n_pop else score >= 3)
    r_hi, f_hi, m_hi = highs
    rfm = np.where(buyer, 1 + 4 * ~m_hi + 2 * ~r_hi + ~f_hi, 0)
    for code, (key, _) in RFM_CLASSES.items():
        masks[sc.RFM_PREFIX + key] = rfm == code
    # Value quadrant.
    h_frq[0] = 0
    h_int[0] = 0
    hi_f = f["orders_365d"] >= max(1.0, pop.median(h_frq))
    hi_i = inter >= max(1.0, pop.median(h_int))
    quadrant = 1 + 2 * ~hi_f + ~hi_i
    for code, (key, _) in QUADRANTS.items():
        masks[sc.QUADRANT_PREFIX + key] = quadrant == code
    # Rules.
    view = _View(today, f, masks, last, count)
    for name, _ in RULES:
        masks[name] = KERNEL_RULES[name](view)
    return masks


def compare(engine: Masks, kernel: Masks) -> dict[str, int]:
    """Tags whose members differ -> how many members differ (empty: all equal)."""
    out = {}
    for name in sorted(set(engine) | set(kernel)):
        a, b = engine.get(name), kernel.get(name)
        if a is None or b is None:
            out[name] = -1
        elif not np.array_equal(np.asarray(a, bool), np.asarray(b, bool)):
            out[name] = int((np.asarray(a, bool) != np.asarray(b, bool)).sum())
    return out
