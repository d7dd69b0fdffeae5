"""The member service's domain rules (services/member/domain): pure functions, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.member.domain import members as dm
from services.member.domain import orders as do
from services.member.domain import points as dp
from services.member.domain import stored_value as dsv
from services.member.domain import tiers as dt
from services.member.domain.errors import RuleViolation
from services.member.domain.members import IdentityKind, Member, MemberKind
from services.member.domain.points import Lot, PointsEntryKind
from services.member.domain.stored_value import MAX_BALANCE_FEN, StoredValueEntryKind
from services.member.domain.tiers import DEFAULT_PROGRAM, Tier, TierProgram

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def days(n: float) -> timedelta:
    return timedelta(days=n)


# -- tiers --

def program(*thresholds: int, retention_days: int = 90) -> TierProgram:
    return TierProgram(tuple(Tier(i, f"T{i}", t) for i, t in enumerate(thresholds)),
                       retention_days=retention_days)


def test_default_program_is_valid() -> None:
    assert dt.program_problems(DEFAULT_PROGRAM) == []


def test_five_tiers_are_rejected() -> None:
    problems = dt.program_problems(program(0, 10, 20, 30, 40))
    assert [path for path, _ in problems] == ["program.tiers"]
    assert dt.program_problems(program(0, 10, 20, 30)) == []


def test_no_tiers_are_rejected() -> None:
    assert [p for p, _ in dt.program_problems(TierProgram(()))] == ["program.tiers"]


@pytest.mark.parametrize("thresholds", [(0, 100, 100), (0, 100, 50)])
def test_thresholds_must_increase(thresholds: tuple[int, ...]) -> None:
    problems = dt.program_problems(program(*thresholds))
    assert [p for p, _ in problems] == ["program.tiers[2].growth_threshold"]


def test_entry_tier_starts_at_zero() -> None:
    problems = dt.program_problems(program(100, 1000))
    assert [p for p, _ in problems] == ["program.tiers[0].growth_threshold"]


def test_other_program_problems() -> None:
    bad = TierProgram(
        (Tier(0, "  ", 0, 0), Tier(2, "B", 10, 10_001, -1)),
        evaluation_window_days=0, retention_days=-1)
    paths = {p for p, _ in dt.program_problems(bad)}
    assert paths == {
        "program.tiers[0].name", "program.tiers[0].points_multiplier_permille",
        "program.tiers[1].level", "program.tiers[1].points_multiplier_permille",
        "program.tiers[1].birthday_gift_points", "program.evaluation_window_days",
        "program.retention_days",
    }


@pytest.mark.parametrize(("growth", "level"), [
    (0, 0), (999, 0), (1_000, 1), (4_999, 1), (5_000, 2), (19_999, 2), (20_000, 3),
    (10**9, 3),
])
def test_qualifying_level(growth: int, level: int) -> None:
    assert DEFAULT_PROGRAM.qualifying_level(growth) == level


def test_upgrade_to_only_moves_up() -> None:
    assert dt.upgrade_to(DEFAULT_PROGRAM, 0, 1_000) == 1
    assert dt.upgrade_to(DEFAULT_PROGRAM, 1, 5_000) == 2
    assert dt.upgrade_to(DEFAULT_PROGRAM, 0, 25_000) == 3
    assert dt.upgrade_to(DEFAULT_PROGRAM, 1, 1_500) is None
    assert dt.upgrade_to(DEFAULT_PROGRAM, 2, 0) is None


def test_reevaluate_keeps_tier_within_retention_window() -> None:
    p = program(0, 1_000, 5_000, retention_days=90)
    assert dt.reevaluate(p, 2, NOW - days(89), 0, NOW) is None
    assert dt.reevaluate(p, 2, NOW - days(90) + timedelta(seconds=1), 1_000, NOW) is None


def test_reevaluate_moves_down_after_retention_window() -> None:
    p = program(0, 1_000, 5_000, retention_days=90)
    assert dt.reevaluate(p, 2, NOW - days(90), 1_200, NOW) == 1
    assert dt.reevaluate(p, 2, NOW - days(400), 0, NOW) == 0


def test_reevaluate_without_retention_moves_down_at_once() -> None:
    p = program(0, 1_000, retention_days=0)
    assert dt.reevaluate(p, 1, NOW, 0, NOW) == 0


def test_reevaluate_moves_up_regardless_of_retention() -> None:
    p = program(0, 1_000, 5_000, retention_days=90)
    assert dt.reevaluate(p, 1, NOW, 6_000, NOW) == 2
    assert dt.reevaluate(p, 1, NOW - days(1), 1_000, NOW) is None


def test_window_start_and_tier_lookup() -> None:
    p = TierProgram(DEFAULT_PROGRAM.tiers, evaluation_window_days=30)
    assert p.window_start(NOW) == NOW - days(30)
    assert p.tier(1).name == DEFAULT_PROGRAM.tiers[1].name
    assert p.tier(9).level == 3  # a level beyond the programme reads as its top tier


# -- points --

def lot(lot_id: str, *, remaining: int, expires_in: float, earned_ago: float = 10,
        order_id: str = "", amount: int | None = None) -> Lot:
    return Lot(lot_id, "m1", NOW - days(earned_ago), NOW + days(expires_in),
               remaining if amount is None else amount, remaining, order_id)


def spend(lots: list[Lot], points: int, *, kind: PointsEntryKind = PointsEntryKind.REDEEM,
          order_id: str = "", allow_partial: bool = False) -> dp.PointsMove:
    return dp.spend(entry_id="e1", member_id="m1", lots=lots, points=points, now=NOW, kind=kind,
                    order_id=order_id, allow_partial=allow_partial)


def test_grant_creates_a_lot_and_an_entry() -> None:
    move = dp.grant(entry_id="e1", member_id="m1", balance=40, points=60, now=NOW,
                    expires_at=NOW + days(365), order_id="o1", reason="order o1")
    (new_lot,) = move.lots
    assert new_lot == Lot("e1", "m1", NOW, NOW + days(365), 60, 60, "o1")
    assert move.entry.kind is PointsEntryKind.EARN
    assert (move.entry.delta, move.entry.balance_after, move.balance) == (60, 100, 100)
    assert move.entry.expires_at == NOW + days(365)
    assert move.entry.order_id == "o1"


@pytest.mark.parametrize("points", [0, -5])
def test_grant_and_spend_are_positive(points: int) -> None:
    with pytest.raises(ValueError):
        dp.grant(entry_id="e", member_id="m1", balance=0, points=points, now=NOW,
                 expires_at=NOW + days(1))
    with pytest.raises(ValueError):
        spend([lot("a", remaining=10, expires_in=5)], points)


def test_spend_takes_soonest_expiring_then_oldest() -> None:
    lots = [
        lot("late-new", remaining=10, expires_in=30, earned_ago=1),
        lot("soon", remaining=5, expires_in=3),
        lot("late-old", remaining=10, expires_in=30, earned_ago=20),
    ]
    move = spend(lots, 12)
    assert move.entry.taken == (("soon", 5), ("late-old", 7))
    assert {x.id: x.remaining for x in move.lots} == {"soon": 0, "late-old": 3}
    assert (move.entry.delta, move.entry.balance_after) == (-12, 13)
    assert move.entry.kind is PointsEntryKind.REDEEM


def test_spend_skips_empty_lots() -> None:
    move = spend([lot("empty", remaining=0, expires_in=1, amount=5),
                  lot("full", remaining=5, expires_in=9)], 2)
    assert move.entry.taken == (("full", 2),)


def test_insufficient_points() -> None:
    with pytest.raises(RuleViolation) as err:
        spend([lot("a", remaining=5, expires_in=3), lot("b", remaining=4, expires_in=8)], 10)
    assert err.value.reason == "INSUFFICIENT_POINTS"
    assert err.value.metadata == {"available": "9", "needed": "10"}


def test_allow_partial_takes_what_there_is() -> None:
    move = spend([lot("a", remaining=5, expires_in=3), lot("b", remaining=4, expires_in=8)],
                 10, kind=PointsEntryKind.REVERSE, allow_partial=True)
    assert move.entry.delta == -9
    assert move.entry.balance_after == 0
    assert all(x.remaining == 0 for x in move.lots)


def test_allow_partial_with_nothing_to_take() -> None:
    move = spend([lot("gone", remaining=7, expires_in=-1)], 3, allow_partial=True)
    assert move.entry.delta == 0
    assert move.entry.taken == ()
    assert move.entry.balance_after == 7  # the unswept lot is still in the balance
    assert move.lots == ()


def test_expired_but_unswept_lots_are_not_spendable() -> None:
    lots = [lot("expired", remaining=10, expires_in=-1), lot("open", remaining=5, expires_in=1)]
    with pytest.raises(RuleViolation) as err:
        spend(lots, 6)
    assert err.value.metadata["available"] == "5"
    move = spend(lots, 5)
    assert move.entry.taken == (("open", 5),)
    # The balance still counts the expired lot until the sweep takes it.
    assert move.entry.balance_after == 10


def test_a_lot_expiring_now_is_due_not_spendable() -> None:
    at_now = lot("now", remaining=4, expires_in=0)
    with pytest.raises(RuleViolation):
        spend([at_now], 1)
    move = dp.expire(entry_id="x", member_id="m1", lots=[at_now], now=NOW)
    assert move is not None and move.entry.delta == -4


def test_expire_zeroes_due_lots_in_one_entry() -> None:
    lots = [
        lot("due1", remaining=10, expires_in=-5),
        lot("due2", remaining=3, expires_in=-1),
        lot("open", remaining=7, expires_in=1),
        lot("spent", remaining=0, expires_in=-3, amount=9),
    ]
    move = dp.expire(entry_id="x", member_id="m1", lots=lots, now=NOW)
    assert move is not None
    assert {x.id: x.remaining for x in move.lots} == {"due1": 0, "due2": 0}
    entry = move.entry
    assert entry.kind is PointsEntryKind.EXPIRE
    assert (entry.delta, entry.balance_after) == (-13, 7)
    assert sorted(entry.taken) == [("due1", 10), ("due2", 3)]


def test_expire_with_nothing_due() -> None:
    assert dp.expire(entry_id="x", member_id="m1", lots=[lot("a", remaining=1, expires_in=1)],
                     now=NOW) is None
    assert dp.expire(entry_id="x", member_id="m1", lots=[], now=NOW) is None


def test_reverse_prefers_the_orders_own_lot() -> None:
    lots = [lot("other", remaining=10, expires_in=2),
            lot("own", remaining=6, expires_in=200, order_id="o1")]
    move = spend(lots, 8, kind=PointsEntryKind.REVERSE, order_id="o1")
    assert move.entry.taken == (("own", 6), ("other", 2))
    assert move.entry.order_id == "o1"


def test_only_reverse_prefers_the_orders_lot() -> None:
    lots = [lot("other", remaining=10, expires_in=2),
            lot("own", remaining=6, expires_in=200, order_id="o1")]
    move = spend(lots, 3, kind=PointsEntryKind.REDEEM, order_id="o1")
    assert move.entry.taken == (("other", 3),)


def test_reverse_without_an_order_uses_expiry_order() -> None:
    lots = [lot("late", remaining=10, expires_in=20),
            lot("soon", remaining=10, expires_in=2, order_id="o9")]
    move = spend(lots, 3, kind=PointsEntryKind.REVERSE, order_id="")
    assert move.entry.taken == (("soon", 3),)


@pytest.mark.parametrize(("fen", "rate", "permille", "points"), [
    (12_345, 1, 1000, 123),   # 123.45 yuan -> 123
    (12_345, 1, 1250, 154),   # 154.3125 -> 154
    (199, 1, 1500, 2),        # 2.985 -> 2 (down, never up)
    (99, 1, 1000, 0),         # under a yuan earns nothing
    (10_000, 2, 1100, 220),
    (100, 1, 999, 0),         # 0.999 -> 0
])
def test_points_for_order_rounds_down(fen: int, rate: int, permille: int, points: int) -> None:
    assert dp.points_for_order(fen, rate, permille) == points


lots_strategy = st.lists(
    st.builds(
        lambda i, rem, exp, earned, amount_extra: Lot(
            f"l{i}", "m1", NOW - days(earned), NOW + days(exp), rem + amount_extra, rem),
        st.integers(0, 10**6), st.integers(0, 500), st.integers(-5, 5), st.integers(0, 30),
        st.integers(0, 50),
    ),
    max_size=8, unique_by=lambda x: x.id,
)


@given(lots_strategy, st.integers(1, 2_000), st.booleans())
def test_spend_properties(lots: list[Lot], points: int, partial: bool) -> None:
    balance = sum(x.remaining for x in lots)
    spendable = [x for x in lots if x.expires_at > NOW]
    available = sum(x.remaining for x in spendable)
    if available < points and not partial:
        with pytest.raises(RuleViolation):
            spend(lots, points)
        return
    move = spend(lots, points, allow_partial=partial)
    want = min(points, available)
    assert move.entry.delta == -want
    assert move.entry.balance_after == balance - want >= 0
    assert sum(t for _, t in move.entry.taken) == want
    by_id = {x.id: x for x in lots}
    after = {x.id: x.remaining for x in move.lots}
    for lot_id, take in move.entry.taken:
        assert by_id[lot_id].expires_at > NOW
        assert 0 < take <= by_id[lot_id].remaining
        assert after[lot_id] == by_id[lot_id].remaining - take
    # Soonest-expiring (then oldest) first: taking from a lot means every lot ahead of
    # it in that order was emptied.
    def key(x: Lot) -> tuple:
        return (x.expires_at, x.earned_at, x.id)

    remaining_after = {x.id: after.get(x.id, x.remaining) for x in spendable}
    for lot_id, _take in move.entry.taken:
        ahead = [y for y in spendable if key(y) < key(by_id[lot_id])]
        assert all(remaining_after[y.id] == 0 for y in ahead)


# -- orders --

def order(amount: int = 10_000, points: int = 123, growth: int = 100) -> do.Order:
    return do.Order("o1", "m1", 1, "s1", "g1", (), amount, NOW, points, growth)


def apply(o: do.Order, refund_id: str, fen: int) -> do.Refund:
    refund = do.plan_refund(o, refund_id, fen, NOW)
    o.refunds.append(refund)
    return refund


def test_growth_for_order() -> None:
    assert do.growth_for_order(12_399, 1) == 123
    assert do.growth_for_order(12_399, 3) == 371


def test_partial_refunds_sum_to_one_full_refund() -> None:
    full = do.plan_refund(order(), "r", 0, NOW)
    assert (full.fen, full.points, full.growth) == (10_000, 123, 100)
    o = order()
    parts = [apply(o, f"r{i}", fen) for i, fen in enumerate((3_333, 3_333, 3_334))]
    assert [p.points for p in parts] == [40, 41, 42]
    assert sum(p.points for p in parts) == full.points
    assert sum(p.growth for p in parts) == full.growth
    assert o.refunded_fen == o.amount_fen


def test_plan_refund_does_not_change_the_order() -> None:
    o = order()
    do.plan_refund(o, "r1", 500, NOW)
    assert o.refunds == []


def test_zero_refunds_everything_left() -> None:
    o = order()
    apply(o, "r1", 3_000)
    rest = do.plan_refund(o, "r2", 0, NOW)
    assert rest.fen == 7_000
    assert rest.points == 123 - o.points_reversed
    assert rest.growth == 100 - o.growth_reversed


def test_refund_exceeding_what_is_left() -> None:
    o = order()
    apply(o, "r1", 9_000)
    with pytest.raises(RuleViolation) as err:
        do.plan_refund(o, "r2", 1_001, NOW)
    assert err.value.reason == "REFUND_EXCEEDS_ORDER"
    assert err.value.metadata["refundable_fen"] == "1000"
    assert do.plan_refund(o, "r2", 1_000, NOW).fen == 1_000


def test_fully_refunded_order() -> None:
    o = order()
    apply(o, "r1", 0)
    for fen in (0, 1):
        with pytest.raises(RuleViolation) as err:
            do.plan_refund(o, "r2", fen, NOW)
        assert err.value.reason == "ORDER_FULLY_REFUNDED"


def test_order_refund_lookup() -> None:
    o = order()
    first = apply(o, "r1", 10)
    assert o.refund("r1") is first
    assert o.refund("nope") is None


@given(
    st.integers(1, 10**7), st.integers(0, 10**5), st.integers(0, 10**5),
    st.lists(st.integers(1, 10**6), max_size=12),
)
def test_refunds_never_reverse_more_or_less_than_a_full_refund(
    amount: int, points: int, growth: int, requests: list[int],
) -> None:
    o = order(amount, points, growth)
    for i, requested in enumerate(requests):
        left = o.amount_fen - o.refunded_fen
        if left == 0:
            break
        refund = apply(o, f"r{i}", min(requested, left))
        assert refund.points >= 0 and refund.growth >= 0
        # Cumulative reversal is exactly the proportional share of what is refunded.
        assert o.points_reversed == points * o.refunded_fen // amount
        assert o.growth_reversed == growth * o.refunded_fen // amount
    if o.refunded_fen < amount:
        apply(o, "last", 0)
    assert o.points_reversed == points
    assert o.growth_reversed == growth


# -- stored value --

def test_top_up_with_bonus() -> None:
    e = dsv.top_up(entry_id="s1", member_id="m1", balance=1_000, amount_fen=50_000,
                   bonus_fen=5_000, now=NOW, reference="pos-1")
    assert e.kind is StoredValueEntryKind.TOP_UP
    assert (e.delta_fen, e.bonus_fen, e.balance_after_fen) == (55_000, 5_000, 56_000)
    assert e.reference == "pos-1"


def test_balance_limit_counts_the_bonus() -> None:
    ok = dsv.top_up(entry_id="s1", member_id="m1", balance=MAX_BALANCE_FEN - 100,
                    amount_fen=90, bonus_fen=10, now=NOW, reference="")
    assert ok.balance_after_fen == MAX_BALANCE_FEN
    with pytest.raises(RuleViolation) as err:
        dsv.top_up(entry_id="s1", member_id="m1", balance=MAX_BALANCE_FEN - 100,
                   amount_fen=90, bonus_fen=11, now=NOW, reference="")
    assert err.value.reason == "BALANCE_LIMIT"


def test_pay() -> None:
    e = dsv.pay(entry_id="s2", member_id="m1", balance=500, amount_fen=500, now=NOW,
                reference="bill-1")
    assert e.kind is StoredValueEntryKind.PAY
    assert (e.delta_fen, e.bonus_fen, e.balance_after_fen) == (-500, 0, 0)
    with pytest.raises(RuleViolation) as err:
        dsv.pay(entry_id="s2", member_id="m1", balance=500, amount_fen=501, now=NOW,
                reference="bill-1")
    assert err.value.reason == "INSUFFICIENT_BALANCE"
    assert err.value.metadata == {"balance_fen": "500", "needed_fen": "501"}


def payment(member_id: str = "m1", fen: int = 500) -> dsv.StoredValueEntry:
    return dsv.pay(entry_id="pay1", member_id=member_id, balance=10_000, amount_fen=fen,
                   now=NOW, reference="bill-1")


def test_refund_payment_is_capped_by_what_it_paid() -> None:
    e = dsv.refund_payment(entry_id="s3", member_id="m1", balance=100, payment=payment(),
                           already_refunded_fen=200, amount_fen=300, now=NOW)
    assert e.kind is StoredValueEntryKind.REFUND
    assert (e.delta_fen, e.balance_after_fen) == (300, 400)
    assert (e.payment_entry_id, e.reference) == ("pay1", "bill-1")
    with pytest.raises(RuleViolation) as err:
        dsv.refund_payment(entry_id="s3", member_id="m1", balance=100, payment=payment(),
                           already_refunded_fen=200, amount_fen=301, now=NOW)
    assert err.value.reason == "REFUND_EXCEEDS_PAYMENT"
    assert err.value.metadata["refundable_fen"] == "300"


def test_refund_payment_needs_a_payment_of_this_member() -> None:
    top = dsv.top_up(entry_id="t1", member_id="m1", balance=0, amount_fen=500, bonus_fen=0,
                     now=NOW, reference="")
    for entry in (top, payment(member_id="m2")):
        with pytest.raises(RuleViolation) as err:
            dsv.refund_payment(entry_id="s3", member_id="m1", balance=0, payment=entry,
                               already_refunded_fen=0, amount_fen=1, now=NOW)
        assert err.value.reason == "NOT_A_PAYMENT"


# -- members --

@pytest.mark.parametrize("raw", [
    "13812345678", "+86 138 1234 5678", "8613812345678", "+8613812345678", "138-1234-5678",
    " 138 1234 5678 ",
])
def test_normalize_phone_accepts(raw: str) -> None:
    assert dm.normalize_phone(raw) == "13812345678"


@pytest.mark.parametrize("raw", [
    "12345678901", "1381234567", "138123456789", "", "+86 1381234567", "1381234567a",
    "+1 138 1234 5678", "23812345678",
])
def test_normalize_phone_rejects(raw: str) -> None:
    assert dm.normalize_phone(raw) is None


@pytest.mark.parametrize(("kind", "value", "app_id", "ok"), [
    (IdentityKind.PHONE, "+86 138 1234 5678", "", True),
    (IdentityKind.PHONE, "12345678901", "", False),
    (IdentityKind.WECHAT_UNIONID, "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", "", True),
    (IdentityKind.WECHAT_UNIONID, "has space", "", False),
    (IdentityKind.WECHAT_UNIONID, "", "", False),
    (IdentityKind.WECHAT_UNIONID, "x" * 129, "", False),
    (IdentityKind.WECHAT_OPENID, "oAbc123", "", False),
    (IdentityKind.WECHAT_OPENID, "oAbc123", "wx1234", True),
    (IdentityKind.WECOM_EXTERNAL_USERID, "wmAbC-123", "", True),
    (IdentityKind.PHONE, "１３８１２３４５６７８", "", True),
    (IdentityKind.PHONE, "١٣٨١٢٣٤٥٦٧٨", "", False),
    (IdentityKind.PHONE, "13812345678\n", "", False),
    (IdentityKind.WECHAT_UNIONID, "u1\n", "", False),
    (IdentityKind.WECHAT_UNIONID, " u1", "", False),
    (IdentityKind.WECHAT_UNIONID, "u\u200b1", "", False),
    (IdentityKind.WECHAT_OPENID, "x:o1", "wxK", True),
    (IdentityKind.WECHAT_OPENID, "o1", "wxK:x", False),
    (0, "x", "", False),
    (99, "x", "", False),
])
def test_identity_problem(kind: int, value: str, app_id: str, ok: bool) -> None:
    assert (dm.identity_problem(kind, value, app_id) is None) is ok


def test_canonical_identity() -> None:
    assert dm.canonical_identity(IdentityKind.PHONE, "+86 １３８-1234-5678") == ("13812345678", "")
    assert dm.canonical_identity(IdentityKind.WECHAT_UNIONID, "ｕ１", "wx") == ("u1", "")
    assert dm.canonical_identity(IdentityKind.WECHAT_OPENID, "o1", "ｗｘ1") == ("o1", "wx1")


def test_registration_owner_follows_only_proving_identities() -> None:
    phone, union = IdentityKind.PHONE, IdentityKind.WECHAT_UNIONID
    anyone = dm.IdentityTrust()
    wechat = dm.IdentityTrust(proving=dm.WECHAT_KINDS, sees_owners=False)
    assert dm.registration_owner([(phone, "m-b"), (union, None)], anyone) == "m-b"
    assert dm.registration_owner([(phone, None), (union, None)], wechat) is None
    assert dm.registration_owner([(phone, "m-a"), (union, "m-a")], wechat) == "m-a"
    for presented in ([(phone, "m-b"), (union, None)], [(phone, "m-b"), (union, "m-a")]):
        with pytest.raises(dm.IdentityConflict) as exc:
            dm.registration_owner(presented, wechat)
        assert exc.value.reason == "IDENTITY_TAKEN" and exc.value.owners == ["m-b"]
    with pytest.raises(dm.IdentityConflict) as exc:
        dm.registration_owner([(phone, "m-b"), (union, "m-a")], anyone)
    assert exc.value.reason == "IDENTITIES_BELONG_TO_DIFFERENT_MEMBERS"


def test_identity_lookup() -> None:
    assert dm.identity_lookup(IdentityKind.WECHAT_OPENID, "o1", "wxA") == "openid:wxA:o1"
    assert dm.identity_lookup(IdentityKind.WECHAT_OPENID, "o1", "wxB") != "openid:wxA:o1"
    assert dm.identity_lookup(IdentityKind.WECHAT_UNIONID, "u1") == "wechat_unionid:u1"


def member(**kw) -> Member:
    return Member(id="m1", identities=[], created_at=NOW, updated_at=NOW, **kw)


def test_derive_kind_priority() -> None:
    everything = member(paid_until=NOW + days(1), stored_value_opened=True, co_branded=True,
                        paid_order_count=5)
    assert dm.derive_kind(everything, NOW, 1) is MemberKind.PAID
    steps = [
        ({"paid_until": None}, MemberKind.STORED_VALUE),
        ({"stored_value_opened": False}, MemberKind.CO_BRANDED),
        ({"co_branded": False}, MemberKind.CONSUMING),
        ({"paid_order_count": 0}, MemberKind.REGISTERED),
    ]
    m = everything
    for change, kind in steps:
        m = replace(m, **change)
        assert dm.derive_kind(m, NOW, 1) is kind


def test_paid_membership_lapses() -> None:
    m = member(paid_until=NOW, co_branded=True)
    assert dm.derive_kind(m, NOW - timedelta(seconds=1), 1) is MemberKind.PAID
    assert dm.derive_kind(m, NOW, 1) is MemberKind.CO_BRANDED
    assert dm.derive_kind(member(paid_until=NOW - days(1)), NOW, 1) is MemberKind.REGISTERED


def test_consuming_threshold() -> None:
    assert dm.derive_kind(member(paid_order_count=2), NOW, 3) is MemberKind.REGISTERED
    assert dm.derive_kind(member(paid_order_count=3), NOW, 3) is MemberKind.CONSUMING


@pytest.mark.parametrize(("text", "problem"), [
    ("", None), ("1990-05-17", None), ("1900-01-01", None), ("2000-02-29", None),
    ("1899-12-31", "is before 1900"), ("1990-02-30", "must be YYYY-MM-DD"),
    ("17/05/1990", "must be YYYY-MM-DD"), ("1990-13-01", "must be YYYY-MM-DD"),
])
def test_birthday_problem(text: str, problem: str | None) -> None:
    assert dm.birthday_problem(text, NOW) == problem


def test_a_birthday_in_the_future_is_refused() -> None:
    """Up to the date it already is somewhere (UTC+14), not after."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # 2 March 02:00 at UTC+14
    assert dm.birthday_problem("2026-03-01", now) is None
    assert dm.birthday_problem("2026-03-02", now) is None
    assert dm.birthday_problem("2026-03-03", now) == "is in the future"
    assert dm.birthday_problem("2090-01-01", now) == "is in the future"


def test_member_copy_is_independent() -> None:
    m = member(consents={1: (True, NOW)})
    c = m.copy()
    c.identities.append(dm.Identity(IdentityKind.PHONE, "phone:x", "enc"))
    c.consents[2] = (False, NOW)
    assert m.identities == [] and list(m.consents) == [1]


@pytest.mark.parametrize(
    ("today", "endings"),
    [
        (date(2026, 3, 1), ("-03-01",)),
        # Born on 29 February: celebrated on the 28th when the year has no 29th.
        (date(2026, 2, 28), ("-02-28", "-02-29")),
        (date(2028, 2, 28), ("-02-28",)),
        (date(2028, 2, 29), ("-02-29",)),
    ],
)
def test_birthday_endings(today: date, endings: tuple[str, ...]) -> None:
    assert dm.birthday_endings(today) == endings
