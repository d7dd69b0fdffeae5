"""The merge rules of domain/merging.py, without I/O: what the survivor keeps and
takes over, the tier, consents, referrals, and the closed merged member."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.member.domain.errors import RuleViolation
from services.member.domain.members import Gender, Identity, IdentityKind, Member, MemberKind
from services.member.domain.merging import MergedRows, check_mergeable, merge
from services.member.domain.orders import Order
from services.member.domain.points import Lot
from services.member.domain.tiers import DEFAULT_PROGRAM

NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def member(member_id: str, **fields) -> Member:
    fields.setdefault("identities", [Identity(IdentityKind.WECHAT_UNIONID, f"u:{member_id}",
                                              member_id)])
    fields.setdefault("tier_since", NOW - 100 * DAY)
    return Member(id=member_id, created_at=NOW - 100 * DAY, updated_at=NOW - DAY, **fields)


def run(s: Member, m: Member, rows: MergedRows = MergedRows(), window: int = 0, **kw):
    return merge(s, m, rows, survivor_window_growth=window, program=DEFAULT_PROGRAM, now=NOW,
                 consuming_threshold=1, **kw)


def test_values_add_up_and_rows_are_re_owned():
    lot = Lot("l1", "b", NOW - 10 * DAY, NOW + 5 * DAY, 100, 40, "o1")
    order = Order("o1", "b", 4, "", "", (), 10_000, NOW - 10 * DAY, 100, 100)
    s = member("a", points_balance=10, stored_value_fen=500, paid_order_count=1,
               total_spent_fen=3_000, growth_value=30, first_paid_at=NOW - 5 * DAY,
               last_paid_at=NOW - 5 * DAY, paid_until=NOW + 3 * DAY)
    m = member("b", points_balance=40, stored_value_fen=700, paid_order_count=2,
               total_spent_fen=10_000, growth_value=100, first_paid_at=NOW - 50 * DAY,
               last_paid_at=NOW - 2 * DAY, paid_until=NOW + 30 * DAY, co_branded=True)
    result = run(s, m, MergedRows(lots=(lot,), orders=(order,)))
    assert (s.points_balance, s.stored_value_fen, s.paid_order_count, s.total_spent_fen,
            s.growth_value) == (50, 1_200, 3, 13_000, 130)
    assert (s.first_paid_at, s.last_paid_at, s.paid_until) == (
        NOW - 50 * DAY, NOW - 2 * DAY, NOW + 30 * DAY)
    assert s.co_branded and s.kind is MemberKind.PAID
    (moved_lot,) = result.lots
    assert moved_lot.member_id == "a" and moved_lot.expires_at == lot.expires_at
    assert moved_lot.remaining == 40 and moved_lot.order_id == "o1"
    (moved_order,) = result.orders
    assert moved_order.member_id == "a" and moved_order.paid_at == order.paid_at
    assert result.moved_lookups == ("u:b",) and len(s.identities) == 2
    # The merged member is closed.
    assert m.merged_into == "a" and m.identities == []
    assert (m.points_balance, m.stored_value_fen, m.paid_order_count, m.growth_value) == (
        0, 0, 0, 0)
    assert m.paid_until is None and m.kind is MemberKind.REGISTERED


def test_profile_is_the_survivors_filled_from_the_merged():
    s = member("a", name="王小明", city="", store_id="s1", guide_id="")
    m = member("b", name="Wang", city="杭州", store_id="s2", guide_id="g2", nickname="鱼",
               birthday="1990-05-01", gender=Gender.FEMALE, channel=3)
    run(s, m)
    assert (s.name, s.city, s.store_id, s.guide_id, s.nickname, s.birthday, s.gender,
            s.channel) == ("王小明", "杭州", "s1", "g2", "鱼", "1990-05-01", Gender.FEMALE, 3)


def test_consents_keep_the_later_decision_per_channel():
    s = member("a", consents={1: (True, NOW - 10 * DAY), 2: (True, NOW - DAY)})
    m = member("b", consents={1: (False, NOW - 2 * DAY), 2: (False, NOW - 20 * DAY),
                              3: (True, NOW - 3 * DAY)})
    run(s, m)
    assert s.consents == {1: (False, NOW - 2 * DAY), 2: (True, NOW - DAY),
                          3: (True, NOW - 3 * DAY)}


def test_referral_between_the_two_records_is_dropped():
    s = member("a", referrer_id="b")
    m = member("b", referrer_id="c")
    run(s, m)
    assert s.referrer_id == "c"
    s2, m2 = member("a"), member("b", referrer_id="a")
    run(s2, m2)
    assert s2.referrer_id == ""


def test_tier_is_never_lowered_and_keeps_its_retention_clock():
    s = member("a", tier_level=1, tier_since=NOW - 10 * DAY)
    m = member("b", tier_level=2, tier_since=NOW - 40 * DAY)
    result = run(s, m)
    assert (s.tier_level, s.tier_since) == (2, NOW - 40 * DAY)
    assert result.tier_change is not None and result.tier_change.reason == "merge"
    # Both at the tier: the later retention clock (the longer protection).
    s, m = member("a", tier_level=1, tier_since=NOW - 10 * DAY), member(
        "b", tier_level=1, tier_since=NOW - 80 * DAY)
    assert run(s, m).tier_change is None and s.tier_since == NOW - 10 * DAY


def test_combined_window_growth_can_reach_a_tier_neither_had():
    s, m = member("a"), member("b")
    result = run(s, m, MergedRows(window_growth=600), window=600)  # silver at 1000
    assert (s.tier_level, s.tier_since) == (1, NOW)
    assert result.tier_change is not None and result.tier_change.to_level == 1


def test_released_identities_are_dropped_not_moved():
    phone = Identity(IdentityKind.PHONE, "phone:h", "enc")
    s = member("a")
    m = member("b", identities=[phone, Identity(IdentityKind.WECHAT_UNIONID, "u:b", "b")])
    result = run(s, m, release=["phone:h"])
    assert result.released_lookups == ("phone:h",) and result.moved_lookups == ("u:b",)
    assert phone not in s.identities


def test_earlier_merges_are_re_pointed_never_chained():
    s = member("c")
    m = member("a", absorbed=["b"])
    result = run(s, m)
    assert result.repoint == ("b",) and s.absorbed == ["a", "b"] and m.absorbed == []


@pytest.mark.parametrize("make", [
    lambda: (member("a"), member("a")),
    lambda: (member("a", merged_into="x"), member("b")),
    lambda: (member("a"), member("b", merged_into="x")),
])
def test_refusals(make):
    s, m = make()
    with pytest.raises(RuleViolation) as info:
        check_mergeable(s, m)
    assert info.value.reason in {"SELF_MERGE", "MEMBER_MERGED"}
