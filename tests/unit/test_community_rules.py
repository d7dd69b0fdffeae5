"""The community's rules without sockets: capacity, entry rules, routing matches and
overflow groups, streaks across the brand's days (an injected clock), chain stock."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.community.domain import chains as dch
from services.community.domain import checkin as dc
from services.community.domain import groups as dg
from services.community.domain import routing as dr
from services.community.domain.errors import RuleViolation
from services.runtime.clock import ManualClock


def reason(call) -> str:
    with pytest.raises(RuleViolation) as info:
        call()
    return info.value.reason


# -- capacity --
@pytest.mark.parametrize(("capacity", "ok"), [(0, True), (1, True), (200, True), (500, True),
                                              (501, False), (-1, False)])
def test_capacity_is_at_most_500(capacity: int, ok: bool):
    assert (dg.capacity_problem(capacity) == "") is ok


def test_a_group_defaults_to_200_and_is_open_until_full():
    g = dg.new_group("g", {"name": "n", "kind": 1}, 0)
    assert (g["capacity"], g["level"], g["open"]) == (200, dg.FIRST_LEVEL, True)
    g = dg.refresh_open({**g, "member_count": 200})
    assert g["open"] is False
    assert reason(lambda: dg.ensure_joinable(g)) == "GROUP_FULL"
    assert reason(lambda: dg.updated_group(g, {"capacity": 150}, 1)) == "CAPACITY_BELOW_MEMBERS"
    bigger = dg.updated_group(g, {"capacity": 201}, 1)
    assert bigger["open"] is True
    archived = dg.archived_group(bigger, 2, "archived")
    assert archived["open"] is False
    assert reason(lambda: dg.ensure_joinable(archived)) == "GROUP_ARCHIVED"


# -- entry rules --
def test_entry_rules_name_the_first_unmet_rule():
    rules = dg.entry_rules_doc(min_tier_level=2, must_have_bought=True, entry_fee_fen=990,
                               segment_id="vip")
    facts = dg.EntryFacts(tier_level=1, has_bought=False, in_segment=False)
    assert reason(lambda: dg.check_entry(rules, facts)) == "ENTRY_TIER_TOO_LOW"
    facts = dg.EntryFacts(tier_level=2, has_bought=False, in_segment=False)
    assert reason(lambda: dg.check_entry(rules, facts)) == "ENTRY_PURCHASE_REQUIRED"
    facts = dg.EntryFacts(tier_level=3, has_bought=True, in_segment=False)
    assert reason(lambda: dg.check_entry(rules, facts)) == "ENTRY_SEGMENT_REQUIRED"
    facts = dg.EntryFacts(tier_level=3, has_bought=True, in_segment=True)
    assert reason(lambda: dg.check_entry(rules, facts)) == "ENTRY_FEE_REQUIRED"
    dg.check_entry(rules, dg.EntryFacts(3, True, True, "pay-1"))
    dg.check_entry(dg.entry_rules_doc(), dg.EntryFacts())  # no rules: anyone


# -- routing --
def test_a_match_needs_every_condition_it_sets():
    match = {**dr.empty_match(), "store_ids": ["s1"], "min_tier_level": 2, "tags": ["pet"],
             "segment_ids": ["a", "b"]}
    fits = dr.MatchFacts("s1", "", 2, frozenset({"pet", "kids"}), {"a": False, "b": True})
    assert dr.matches(match, fits)
    assert not dr.matches(match, dr.MatchFacts("s2", "", 2, fits.tags, fits.segments))
    assert not dr.matches(match, dr.MatchFacts("s1", "", 1, fits.tags, fits.segments))
    assert not dr.matches(match, dr.MatchFacts("s1", "", 2, frozenset({"kids"}), fits.segments))
    assert not dr.matches(match, dr.MatchFacts("s1", "", 2, fits.tags, {"a": False}))
    assert dr.matches(dr.empty_match(), dr.MatchFacts())
    assert dr.needs(match) == (True, True, True)
    assert dr.needs(dr.empty_match()) == (False, False, False)


def test_an_overflow_group_is_numbered_from_the_template():
    template = {"name_prefix": "Fruit club", "kind": 9, "level": 0, "store_id": "s1",
                "city": "", "owner_guide_id": "guide-7", "capacity": 0,
                "entry_rules": dg.entry_rules_doc(must_have_bought=True),
                "qr_code_url": "https://qr/{sequence}.png"}
    rule = dr.new_rule("r1", {"name": "Rule", "template": template}, 0)
    g = dr.overflow_group(rule, 7, 5)
    assert (g["_id"], g["name"], g["qr_code_url"], g["pool_id"], g["sequence"]) == (
        "r1-7", "Fruit club 7", "https://qr/7.png", "r1", 7)
    assert (g["capacity"], g["owner_guide_id"], g["entry_rules"]["must_have_bought"]) == (
        200, "guide-7", True)
    nameless = dr.overflow_group({**rule, "template": {**template, "name_prefix": ""}}, 2, 5)
    assert nameless["name"] == "Rule 2"
    assert dr.POOL_ORDER[dr.FILL_FIRST] == ("sequence",)
    assert dr.POOL_ORDER[dr.BALANCE] == ("member_count", "sequence")


# -- streaks --
def test_the_brand_day_follows_its_time_zone():
    clock = ManualClock(datetime(2026, 3, 3, 15, 59, tzinfo=UTC))
    assert dc.brand_day(clock.now(), "Asia/Shanghai") == date(2026, 3, 3)
    clock.advance(minutes=2)  # 00:01 in Shanghai
    assert dc.brand_day(clock.now(), "Asia/Shanghai") == date(2026, 3, 4)
    assert dc.brand_day(clock.now(), "UTC") == date(2026, 3, 3)


def test_streaks_run_on_consecutive_days_and_keep_the_best():
    s = dc.next_streak(None, date(2026, 3, 1))
    s = dc.next_streak(s, date(2026, 3, 2))
    s = dc.next_streak(s, date(2026, 3, 3))
    assert (s["streak"], s["best_streak"], s["total_days"]) == (3, 3, 3)
    assert dc.current_streak(s, date(2026, 3, 4)) == 3  # not broken yet
    assert dc.current_streak(s, date(2026, 3, 5)) == 0
    s = dc.next_streak(s, date(2026, 3, 5))
    assert (s["streak"], s["best_streak"], s["total_days"]) == (1, 3, 4)


@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_the_best_streak_is_the_longest_run_of_days(days: list[bool]):
    s = None
    start = date(2026, 1, 1)
    for i, checked in enumerate(days):
        if checked:
            s = dc.next_streak(s, date.fromordinal(start.toordinal() + i))
    runs = "".join("x" if d else "." for d in days).split(".")
    longest = max(len(r) for r in runs)
    assert (s["best_streak"] if s else 0) == longest
    assert (s["total_days"] if s else 0) == sum(days)


# -- chains --
def test_a_chain_is_never_oversold_and_keeps_the_member_limit():
    chain = dch.new_chain("c", "g", "Cherries", 19_900, 5, 3, 100, "guide", 0)
    chain, e1 = dch.join(chain, None, "m1", 3, 10)
    assert (chain["sold"], e1["position"]) == (3, 1)
    assert reason(lambda: dch.join(chain, None, "m2", 3, 10)) == "CHAIN_OVER_STOCK"
    assert reason(lambda: dch.join(chain, e1, "m1", 1, 10)) == "CHAIN_ALREADY_JOINED"
    assert reason(lambda: dch.change(chain, e1, 4, 10)) == "CHAIN_MEMBER_LIMIT"
    chain, e1 = dch.change(chain, e1, 1, 10)
    chain, _ = dch.join(chain, None, "m2", 3, 10)
    assert chain["sold"] == 4
    chain, e1 = dch.withdraw(chain, e1, 20)
    assert chain["sold"] == 3 and e1["state"] == dch.WITHDRAWN
    assert reason(lambda: dch.withdraw(chain, e1, 20)) == "CHAIN_ENTRY_NOT_FOUND"
    assert reason(lambda: dch.join(chain, None, "m3", 1, 100)) == "CHAIN_DEADLINE_PASSED"
    closed = dch.closed(chain, 50, "guide")
    assert reason(lambda: dch.join(closed, None, "m3", 1, 60)) == "CHAIN_CLOSED"


@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["join", "change", "withdraw"]),
                          st.integers(1, 4)), max_size=80))
def test_sold_is_always_the_active_entries_and_never_above_stock(moves):
    chain = dch.new_chain("c", "g", "p", 100, 12, 4, 1000, "guide", 0)
    entries: dict[str, dict] = {}
    for member, move, quantity in moves:
        mid = f"m{member}"
        entry = entries.get(mid)
        try:
            if move == "join":
                chain, entries[mid] = dch.join(chain, entry, mid, quantity, 1)
            elif move == "change":
                chain, entries[mid] = dch.change(chain, entry, quantity, 1)
            else:
                chain, entries[mid] = dch.withdraw(chain, entry, 1)
        except RuleViolation:
            pass
        active = sum(e["quantity"] for e in entries.values() if e["state"] == dch.ACTIVE)
        assert chain["sold"] == active <= chain["stock"]


def test_streak_of_days_merges_two_records_of_one_person():
    from datetime import date

    from services.community.domain.checkin import streak_of_days

    d = date(2026, 3, 1)
    days = {d, d.replace(day=2), d.replace(day=3), d.replace(day=5), d.replace(day=6)}
    assert streak_of_days(days) == {"streak": 2, "best_streak": 3, "total_days": 5,
                                    "last_day": "2026-03-06"}
    assert streak_of_days({d}) == {"streak": 1, "best_streak": 1, "total_days": 1,
                                   "last_day": "2026-03-01"}
    assert streak_of_days(set()) is None


def test_a_check_in_can_exist_only_up_to_the_streaks_last_day():
    streak = {"streak": 2, "best_streak": 2, "total_days": 2, "last_day": "2026-03-04"}
    assert not dc.may_have_checked_in(None, date(2026, 3, 4))
    assert not dc.may_have_checked_in(streak, date(2026, 3, 5))
    assert dc.may_have_checked_in(streak, date(2026, 3, 4))
    assert dc.may_have_checked_in(streak, date(2026, 3, 3))  # a clock set back
