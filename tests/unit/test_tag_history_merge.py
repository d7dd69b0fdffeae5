"""MemberHistory.absorb: a merged member's history adds up into the survivor's."""

from __future__ import annotations

from services.tagging.domain.features import NEVER
from services.tagging.domain.history import MemberHistory

TODAY = 20_000


def test_absorb_adds_up_with_each_fact_on_its_own_day():
    mine = MemberHistory(1, registered_day=TODAY - 10, tier=1, points_balance=50)
    mine.order_paid(TODAY - 5, 1_000, {7}, TODAY)
    other = MemberHistory(2, registered_day=TODAY - 300, tier=2, points_balance=30)
    other.order_paid(TODAY - 40, 3_000, {7, 8}, TODAY)
    other.order_paid(TODAY - 3, 2_000, set(), TODAY)
    other.interacted(TODAY - 2, TODAY)
    mine.absorb(other, TODAY)
    assert (mine.registered_day, mine.tier, mine.points_balance) == (TODAY - 300, 2, 80)
    assert (mine.orders_total, mine.spend_total) == (3, 6_000)
    assert (mine.first_order_day, mine.last_order_day) == (TODAY - 40, TODAY - 3)
    assert mine.orders == [(TODAY - 40, 3_000, 1), (TODAY - 5, 1_000, 1), (TODAY - 3, 2_000, 1)]
    assert mine.categories == {7: [TODAY - 40, TODAY - 5, 2], 8: [TODAY - 40, TODAY - 40, 1]}
    assert mine.interactions == [TODAY - 2]


def test_absorb_into_an_empty_history_takes_the_others_days():
    mine = MemberHistory(1)
    other = MemberHistory(2, registered_day=TODAY - 3)
    other.order_paid(TODAY - 1, 500, set(), TODAY)
    mine.absorb(other, TODAY)
    assert (mine.registered_day, mine.first_order_day) == (TODAY - 3, TODAY - 1)
    empty = MemberHistory(3)
    mine.absorb(empty, TODAY)
    assert mine.first_order_day == TODAY - 1 and mine.registered_day != NEVER
