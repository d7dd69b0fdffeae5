"""Group activity and dead-group diagnosis.

Operators say groups die at three moments, each with its own cause: in the first
days (the traffic was wrong for the group), after 10-15 days (the topics dried up),
after a month (the group gives no value: nobody buys). The diagnosis names the
phase, shows its evidence and suggests what to do. Activity is weighted by how much
an action shows interest: a message 1, a check-in 2, a chain join 5, an order 8."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

MESSAGE_WEIGHT, CHECK_IN_WEIGHT, CHAIN_JOIN_WEIGHT, ORDER_WEIGHT = 1, 2, 5, 8

EARLY_DAYS = 7  # "the first days"
TOPIC_DAYS = 10  # from day 10 on, a fall-off means the topics dried up
VALUE_DAYS = 30  # after a month, no transactions means no value
EARLY_ACTIVE_SHARE = 0.10  # fewer than 10% of members ever speaking in the first days
TOPIC_FALL_SHARE = 0.30  # the last 5 days at under 30% of the first week's activity


@dataclass(frozen=True)
class DayActivity:
    day: date
    messages: int = 0
    speakers: int = 0  # distinct members who sent a message that day
    check_ins: int = 0
    chain_joins: int = 0
    orders: int = 0

    @property
    def weight(self) -> int:
        return (
            self.messages * MESSAGE_WEIGHT
            + self.check_ins * CHECK_IN_WEIGHT
            + self.chain_joins * CHAIN_JOIN_WEIGHT
            + self.orders * ORDER_WEIGHT
        )


class Phase(StrEnum):
    HEALTHY = "healthy"
    TOO_NEW = "too_new"  # under three days: nothing to judge yet
    WRONG_TRAFFIC = "wrong_traffic"  # dies in the first days
    TOPICS_DRIED_UP = "topics_dried_up"  # dies after 10-15 days
    NO_VALUE = "no_value"  # dies after a month


SUGGESTIONS = {
    Phase.HEALTHY: "Keep the columns going; consider graduating the most active members.",
    Phase.TOO_NEW: "Wait for three days of activity before judging.",
    Phase.WRONG_TRAFFIC: (
        "The members who came in do not match the group: check the routing rule and the "
        "channel that sent them, and welcome newcomers with a topic of the group's theme."
    ),
    Phase.TOPICS_DRIED_UP: (
        "Topics dried up: schedule columns (morning new arrivals, a daily topic, "
        "check-in) and ask the guide to start conversations."
    ),
    Phase.NO_VALUE: (
        "Nobody buys here: add transactions (chain orders, flash sales, member-day "
        "coupons, order show-offs) or merge the group into a livelier one."
    ),
}


@dataclass(frozen=True)
class Diagnosis:
    phase: Phase
    age_days: int
    score_7d: float
    score_30d: float
    evidence: dict[str, float]
    suggestion: str


def _window(days: Iterable[DayActivity], today: date, length: int) -> list[DayActivity]:
    first = today - timedelta(days=length - 1)
    return [d for d in days if first <= d.day <= today]


def activity_score(days: Iterable[DayActivity], members: int, today: date, window: int) -> float:
    """0-100: weighted actions per member per day over the window, on a log scale so
    that one busy group does not flatten every other (1 weighted action per member a
    day scores about 70)."""
    total = sum(d.weight for d in _window(days, today, window))
    per_member_day = total / max(members, 1) / window
    return round(min(100.0, 100 * math.log1p(per_member_day * 4) / math.log1p(4 * 3)), 2)


def diagnose(days: Sequence[DayActivity], members: int, created_on: date, today: date) -> Diagnosis:
    age = (today - created_on).days + 1
    score_7d = activity_score(days, members, today, 7)
    score_30d = activity_score(days, members, today, 30)
    first_week = [d for d in days if created_on <= d.day < created_on + timedelta(EARLY_DAYS)]
    first_week_weight = sum(d.weight for d in first_week) / EARLY_DAYS
    evidence: dict[str, float] = {"age_days": age, "members": members}
    phase = Phase.HEALTHY
    if age < 3:
        phase = Phase.TOO_NEW
    elif age <= EARLY_DAYS:
        elapsed = min(age, EARLY_DAYS)
        speaker_share = max((d.speakers for d in first_week), default=0) / max(members, 1)
        evidence |= {"peak_speaker_share": round(speaker_share, 3), "days_judged": elapsed}
        if speaker_share < EARLY_ACTIVE_SHARE:
            phase = Phase.WRONG_TRAFFIC
    else:
        recent = _window(days, today, 5)
        recent_weight = sum(d.weight for d in recent) / 5
        evidence |= {
            "first_week_daily_activity": round(first_week_weight, 2),
            "last_5_days_daily_activity": round(recent_weight, 2),
        }
        month = _window(days, today, VALUE_DAYS)
        transactions = sum(d.orders + d.chain_joins for d in month)
        evidence["transactions_30d"] = transactions
        if age >= VALUE_DAYS and transactions == 0:
            phase = Phase.NO_VALUE
        elif age >= TOPIC_DAYS and recent_weight < TOPIC_FALL_SHARE * first_week_weight:
            phase = Phase.TOPICS_DRIED_UP
        elif first_week_weight == 0 and recent_weight == 0:
            phase = Phase.TOPICS_DRIED_UP
    return Diagnosis(phase, age, score_7d, score_30d, evidence, SUGGESTIONS[phase])


def weekday_effect(
    days: Sequence[DayActivity], post_days: Iterable[date]
) -> dict[int, float | None]:
    """A column's effect per weekday (0 = Monday): the group's mean activity on days
    the column posted over its mean on the same weekday without a post. None where
    either side has no day to compare."""
    posted = set(post_days)
    with_post: dict[int, list[int]] = {w: [] for w in range(7)}
    without: dict[int, list[int]] = {w: [] for w in range(7)}
    for d in days:
        (with_post if d.day in posted else without)[d.day.weekday()].append(d.weight)
    effect: dict[int, float | None] = {}
    for weekday in range(7):
        on, off = with_post[weekday], without[weekday]
        if not on or not off or sum(off) == 0:
            effect[weekday] = None
        else:
            effect[weekday] = round((sum(on) / len(on)) / (sum(off) / len(off)), 3)
    return effect


@dataclass(frozen=True)
class WeekdayCompare:
    ratio: float | None  # mean weight on post days over days without; None: no comparison
    posted_days: int
    other_days: int


def pooled_weekday_effect(
    groups: Iterable[tuple[Sequence[DayActivity], Iterable[date]]],
) -> dict[int, WeekdayCompare]:
    """weekday_effect over several groups at once (0 = Monday): each group's days
    with a post of the column against its days without, pooled per weekday."""
    on: dict[int, list[int]] = {w: [] for w in range(7)}
    off: dict[int, list[int]] = {w: [] for w in range(7)}
    for days, post_days in groups:
        posted = set(post_days)
        for d in days:
            (on if d.day in posted else off)[d.day.weekday()].append(d.weight)
    out: dict[int, WeekdayCompare] = {}
    for w in range(7):
        ratio = None
        if on[w] and off[w] and sum(off[w]) > 0:
            ratio = round((sum(on[w]) / len(on[w])) / (sum(off[w]) / len(off[w])), 3)
        out[w] = WeekdayCompare(ratio, len(on[w]), len(off[w]))
    return out


def day_activity(doc: dict[str, object]) -> DayActivity:
    """A stored day of a group's counters (missing counters are 0)."""
    def n(name: str) -> int:
        value = doc.get(name, 0)
        return value if isinstance(value, int) else 0

    return DayActivity(date.fromisoformat(str(doc["day"])), n("messages"), n("speakers"),
                       n("check_ins"), n("chain_joins"), n("orders"))


def filled(days: Iterable[DayActivity], first: date, last: date) -> list[DayActivity]:
    """Every day from `first` to `last`, those without a record as days of nothing."""
    known = {d.day: d for d in days}
    out, day = [], first
    while day <= last:
        out.append(known.get(day, DayActivity(day)))
        day += timedelta(days=1)
    return out
