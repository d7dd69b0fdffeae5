"""The tag/segment expression language (services/tagging/domain/expressions.py) and its
bitmap evaluation (segment_eval.py): parsing, checking, numpy and bitmap evaluation."""

from __future__ import annotations

import builtins
import random
import warnings

import numpy as np
import pytest
from pyroaring import BitMap

from services.tagging.domain.evaluation import FrameContext, evaluate
from services.tagging.domain.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    Arith,
    Bool,
    BoolOp,
    Call,
    Compare,
    Expr,
    ExpressionError,
    Feature,
    Neg,
    Not,
    Num,
    parse,
    referenced_categories,
    referenced_features,
    referenced_segments,
    referenced_tags,
    uses_only_bitmaps,
)
from services.tagging.domain.features import (
    FEATURES,
    NEVER,
    NEVER_DAYS,
    FeatureFrame,
    History,
    compute_features,
)
from services.tagging.domain.segment_eval import (
    FrameBitmapContext,
    bitmap_from_indexes,
    evaluate_bitmap,
)


def sx(e: Expr) -> str:
    """Fully parenthesised rendering of the AST, to check how the parser grouped things;
    n-ary chains are shown left-nested, as the operators associate."""
    match e:
        case Num(v):
            return str(v)
        case Bool(v):
            return "true" if v else "false"
        case Feature(name):
            return name
        case Call(name, args):
            return f"{name}({', '.join(repr(a) for a in args)})"
        case Not(x):
            return f"(not {sx(x)})"
        case Neg(x):
            return f"(- {sx(x)})"
        case BoolOp(op, xs):
            out = sx(xs[0])
            for x in xs[1:]:
                out = f"({out} {op} {sx(x)})"
            return out
        case Compare(op, a, b):
            return f"({sx(a)} {op} {sx(b)})"
        case Arith(ops, xs):
            out = sx(xs[0])
            for op, x in zip(ops, xs[1:], strict=True):
                out = f"({out} {op} {sx(x)})"
            return out
    raise AssertionError(e)


# -- parsing and precedence --


@pytest.mark.parametrize(
    ("source", "tree"),
    [
        (
            'has_tag("a") or has_tag("b") and has_tag("c")',
            "(has_tag('a') or (has_tag('b') and has_tag('c')))",
        ),
        ('not has_tag("a") and has_tag("b")', "((not has_tag('a')) and has_tag('b'))"),
        (
            'not has_tag("a") or not not has_tag("b")',
            "((not has_tag('a')) or (not (not has_tag('b'))))",
        ),
        (
            '(has_tag("a") or has_tag("b")) and has_tag("c")',
            "((has_tag('a') or has_tag('b')) and has_tag('c'))",
        ),
        (
            'has_tag("a") and has_tag("b") and has_tag("c") or true',
            "(((has_tag('a') and has_tag('b')) and has_tag('c')) or true)",
        ),
        ("not tier > 1", "(not (tier > 1))"),
        ('not has_tag("a") == has_tag("b")', "(not (has_tag('a') == has_tag('b')))"),
        (
            "orders_90d + 2 * tier - 1 > 4 / 2 / 1",
            "(((orders_90d + (2 * tier)) - 1) > ((4 / 2) / 1))",
        ),
        ("- - tier * 3 <= -1", "(((- (- tier)) * 3) <= (- 1))"),
        ("(1 + 2) * 3 >= 1.5", "(((1 + 2) * 3) >= 1.5)"),
        ("1 - (2 - 3) != 0", "((1 - (2 - 3)) != 0)"),
        ("tier>=2 and\n\torders_90d<1", "((tier >= 2) and (orders_90d < 1))"),
        ("true", "true"),
        ("((false))", "false"),
        (
            "bought(\"母婴\", 30) or category_orders('美妆') > 0.5",
            "(bought('母婴', 30) or (category_orders('美妆') > 0.5))",
        ),
        (
            'has_tag("say \\"hi\\"") and has_tag(\'it\\\'s\')',
            '(has_tag(\'say "hi"\') and has_tag("it\'s"))',
        ),
    ],
)
def test_parse_groups_by_precedence(source: str, tree: str) -> None:
    assert sx(parse(source)) == tree


def test_ast_is_immutable_and_positions_do_not_affect_equality() -> None:
    e = parse('orders_90d >= 2 and has_tag("has_kids")')
    assert e == parse('orders_90d>=2   and  has_tag( "has_kids" )')
    assert e == BoolOp(
        "and", (Compare(">=", Feature("orders_90d"), Num(2)), Call("has_tag", ("has_kids",)))
    )
    assert isinstance(e, BoolOp) and e.operands[1].pos == 20
    with pytest.raises(AttributeError):
        e.op = "or"  # type: ignore[misc]
    assert hash(e) == hash(parse('orders_90d >= 2 and has_tag("has_kids")'))


def test_numbers_keep_int_or_decimal() -> None:
    e = parse("tier > 007 and aov < 12.50")
    assert isinstance(e, BoolOp)
    assert [c.right for c in e.operands] == [Num(7), Num(12.5)]  # type: ignore[union-attr]


def test_known_features_can_be_narrowed_or_extended() -> None:
    with pytest.raises(ExpressionError, match="unknown feature 'aov'"):
        parse("aov > 1", known_features={"tier"})
    assert referenced_features(parse("churn_score > 0.5", known_features={"churn_score"})) == {
        "churn_score"
    }


# -- errors, with exact positions --

ERRORS = [
    # unknown names
    (
        "orders_90d >= 2 and ordrs_90d > 1",
        20,
        "unknown feature 'ordrs_90d' (did you mean 'orders_90d'?)",
    ),
    ('has_tag("宝妈") and ordrs_90d > 1', 18, "unknown feature 'ordrs_90d'"),
    ("xyzzy > 1", 0, "unknown feature 'xyzzy'"),
    (
        'tier > 1 and has_tags("x")',
        13,
        "'has_tags' is an unknown function (did you mean 'has_tag'?)",
    ),
    ("tier(1) > 1", 0, "'tier' is a feature, not a function"),
    ("has_tag and true", 0, "'has_tag' is a function: call it as has_tag(...)"),
    ("TRUE", 0, "unexpected 'TRUE' (keywords are lower-case: 'true')"),
    ("true And false", 5, "unexpected 'And' (keywords are lower-case: 'and')"),
    # arguments
    ("has_tag()", 8, "has_tag() takes 1 argument (tag name), got 0"),
    ('has_tag("a", "b")', 13, "has_tag() takes 1 argument (tag name), got 2"),
    ('bought("food")', 13, "bought() takes 2 arguments (category, days), got 1"),
    ('bought(30, "food")', 7, "argument 1 of bought() (category) must be a string, got a number"),
    ('bought("food", "30")', 15, "argument 2 of bought() (days) must be a number, got a string"),
    ("in_segment(42)", 11, "argument 1 of in_segment() (segment id) must be a string"),
    ('has_tag("")', 8, "argument 1 of has_tag() (tag name) is empty"),
    ("has_tag(vip)", 8, "must be quoted strings or numbers, got 'vip' (quote it: \"vip\")"),
    ('has_tag("a",)', 12, "must be quoted strings or numbers, got ')'"),
    ('has_tag("a" "b")', 12, "expected ',' or ')', got string '\"b\"'"),
    ('has_tag("a"', 11, "expected ',' or ')', got end of expression"),
    ("category_orders(-1) > 0", 16, "must be quoted strings or numbers, got '-'"),
    # types
    ("orders_90d + 1", 0, "a rule must be a condition (true/false), got a number"),
    ('category_orders("x")', 0, "a rule must be a condition"),
    ("(tier)", 0, "a rule must be a condition"),
    ("tier and true", 0, "'and' needs a boolean, got a number"),
    ("true or 1", 8, "'or' needs a boolean, got a number"),
    ("not tier", 4, "'not' needs a boolean, got a number"),
    ("true > 1", 0, "'>' needs a number, got a boolean"),
    ('1 <= has_tag("a")', 5, "'<=' needs a number, got a boolean"),
    ("true == 1", 8, "'==' cannot compare a boolean with a number"),
    ("tier != (1 > 0)", 8, "'!=' cannot compare a number with a boolean"),
    ("1 + true > 0", 4, "'+' needs a number, got a boolean"),
    ("(1 > 0) * 2 > 0", 0, "'*' needs a number, got a boolean"),
    ("-true", 1, "'-' needs a number, got a boolean"),
    ('"vip"', 0, "a string can only be a function argument"),
    ('tier > 1 and "vip"', 13, "a string can only be a function argument"),
    # lexical
    ('has_tag("vip) and true', 8, "unterminated string"),
    ("has_tag('vip\n') and true", 8, "unterminated string"),
    (r'has_tag("a\n")', 10, "unknown escape in string"),
    ("tier = 1", 5, "unexpected character '=' (did you mean '=='?)"),
    ("!true", 0, "unexpected character '!' (use 'not')"),
    ("true && false", 5, "unexpected character '&' (use 'and')"),
    ("true || false", 5, "unexpected character '|' (use 'or')"),
    ("tier > 1 ; true", 9, "unexpected character ';'"),
    ("tier > ２", 7, "unexpected character '２'"),
    ("2x > 1", 0, "malformed number '2x'"),
    ("1.5.2 > 1", 0, "malformed number '1.5.2'"),
    ("tier >= 2and true", 8, "malformed number '2and'"),
    ("tier > 1.", 7, "malformed number '1.'"),
    ("tier > " + "9" * 400, 7, "number too large"),
    # structure
    ("", 0, "empty expression"),
    ("  \n\t ", 0, "empty expression"),
    ("tier >", 6, "expected a value, got end of expression"),
    ("tier > > 1", 7, "expected a value, got '>'"),
    ("and true", 0, "expected a value, got 'and'"),
    ("()", 1, "expected a value, got ')'"),
    ("(tier > 1", 9, "expected ')' to close '(' at 0, got end of expression"),
    ("(tier > 1 true)", 10, "expected ')' to close '(' at 0, got 'true'"),
    ("tier > 1)", 8, "unexpected ')' (no matching '(')"),
    ("true false", 5, "unexpected 'false'"),
    ("tier > 1 2", 9, "unexpected number '2'"),
    ("1 < tier < 3", 9, "comparisons cannot be chained; use 'and'"),
    ("true == false == true", 14, "comparisons cannot be chained"),
    # would-be code injection: a clean error, nothing is ever evaluated
    ('__import__("os").system("rm -rf /")', 0, "'__import__' is an unknown function"),
    ("orders_90d.__class__", 10, "unexpected character '.'"),
    ("[x for x in ()]", 0, "unexpected character '['"),
    ("lambda: 1", 6, "unexpected character ':'"),
    ("open('x') or true", 0, "'open' is an unknown function"),
    ("eval('1') > 0", 0, "'eval' is an unknown function"),
    ("tier > 1 # comment", 9, "unexpected character '#'"),
]


@pytest.mark.parametrize(("source", "position", "message"), ERRORS)
def test_errors_name_the_position(source: str, position: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    err = info.value
    assert err.position == position, str(err)
    assert message in err.message
    assert str(err) == f"at {position}: {err.message}"


def test_error_message_format() -> None:
    with pytest.raises(ExpressionError) as info:
        parse("orders_90d >= 2 and ordrs_90d > 1")
    assert str(info.value) == "at 20: unknown feature 'ordrs_90d' (did you mean 'orders_90d'?)"
    assert info.value.message == "unknown feature 'ordrs_90d' (did you mean 'orders_90d'?)"


def test_non_string_source_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse(b"true")  # type: ignore[arg-type]


def test_max_length() -> None:
    ok = "true" + " " * (MAX_LENGTH - 4)
    assert parse(ok) == Bool(True)
    with pytest.raises(ExpressionError) as info:
        parse(ok + " ")
    assert info.value.position == MAX_LENGTH
    assert "too long (2001 characters; at most 2000)" in info.value.message


@pytest.mark.parametrize(
    ("opener", "closer", "atom", "step"),
    [
        ("not ", "", "true", 4),
        ("(", ")", "true", 1),
        ("-", "", "1 > 0", 1),
        ("(not ", ")", "true", 5),
    ],
)
def test_max_nesting_depth(opener: str, closer: str, atom: str, step: int) -> None:
    levels = MAX_DEPTH // (2 if opener == "(not " else 1)
    parse(opener * levels + atom + closer * levels)
    with pytest.raises(ExpressionError) as info:
        parse(opener * (levels + 1) + atom + closer * (levels + 1))
    assert f"nested deeper than {MAX_DEPTH} levels" in info.value.message
    assert info.value.position == levels * step  # where the 51st level opens


def test_deep_input_is_an_error_not_a_recursion_error() -> None:
    for source in ["(" * 1500, "not " * 499, "-" * 1999, "(-" * 999]:
        with pytest.raises(ExpressionError, match="nested deeper"):
            parse(source)


def test_long_flat_chains_parse_and_evaluate() -> None:
    arith = parse("1+" * 995 + "1 > 995")  # 1995 characters
    bools = parse(" and ".join(['has_tag("a")'] * 110))
    assert isinstance(bools, BoolOp) and len(bools.operands) == 110
    ctx = FrameContext(small_frame(), {"a": np.array([True, False, True, False])})
    assert evaluate(arith, ctx).all()
    assert evaluate(bools, ctx).tolist() == [True, False, True, False]


def test_parse_never_calls_eval_exec_or_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("called")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, boom)
    ctx = FrameContext(small_frame(), {"a": np.ones(4, dtype=bool)})
    assert evaluate(parse('has_tag("a") and tier + 1 > 0'), ctx).all()
    for source, _, _ in ERRORS:
        with pytest.raises(ExpressionError):
            parse(source)


# -- semantics on a hand-built frame --

TODAY = 1000
FOOD, BABY, TOYS = 0, 1, 5  # category dictionary; nobody bought toys, id 7 is not named


def _csr(rows: list[list[tuple[int, ...]]], dtypes: list[type]) -> list[np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    flat = [x for r in rows for x in r]
    cols = [np.array([x[k] for x in flat], dtype=dt) for k, dt in enumerate(dtypes)]
    return [offsets, *cols]


def small_frame() -> FeatureFrame:
    """Four members as of day 1000:
    0: food (first 900, last 999 = yesterday, 3 times), baby (last 900); orders 995, 950, 800
    1: food today (once); one order today
    2: nothing at all
    3: baby (first 920, last 930, twice) and an unnamed category 7; no orders"""
    orders = [[(995, 5000), (950, 3000), (800, 1000)], [(1000, 2000)], [], []]
    cats = [
        [(FOOD, 900, 999, 3), (BABY, 900, 900, 1)],
        [(FOOD, 1000, 1000, 1)],
        [],
        [(7, 910, 990, 4), (BABY, 920, 930, 2)],
    ]
    ord_offsets, ord_day, ord_fen = _csr(orders, [np.int32, np.int64])
    cat_offsets, cat_id, cat_first, cat_last, cat_count = _csr(
        cats, [np.int32, np.int32, np.int32, np.int32]
    )
    h = History(
        idx=np.arange(4, dtype=np.uint32),
        registered_day=np.array([700, 990, 999, 500], dtype=np.int32),
        tier=np.array([2, 0, 0, 1], dtype=np.int8),
        points_balance=np.array([100, 0, 0, 50], dtype=np.int64),
        orders_total=np.array([3, 1, 0, 0], dtype=np.int64),
        spend_total=np.array([9000, 2000, 0, 0], dtype=np.int64),
        first_order_day=np.array([800, 1000, NEVER, NEVER], dtype=np.int32),
        last_order_day=np.array([995, 1000, NEVER, NEVER], dtype=np.int32),
        ord_offsets=ord_offsets,
        ord_day=ord_day,
        ord_fen=ord_fen,
        cat_offsets=cat_offsets,
        cat_id=cat_id,
        cat_first_day=cat_first,
        cat_last_day=cat_last,
        cat_count=cat_count,
    )
    return compute_features(h, TODAY)


def small_ctx() -> FrameContext:
    return FrameContext(
        small_frame(),
        tag_masks={
            "has_kids": np.array([True, False, False, True]),
            "vip": np.array([False, False, False, True]),
        },
        segment_masks={"seg_1": np.array([False, True, True, False])},
        category_ids={"food": FOOD, "baby": BABY, "toys": TOYS},
    )


@pytest.mark.parametrize(
    ("source", "members"),
    [
        ("true", [0, 1, 2, 3]),
        ("false", []),
        ('has_tag("has_kids")', [0, 3]),
        ('has_tag("no_such_tag")', []),
        ('not has_tag("no_such_tag")', [0, 1, 2, 3]),
        ('in_segment("seg_1")', [1, 2]),
        ('in_segment("seg_unknown")', []),
        ('orders_90d >= 2 and has_tag("has_kids") and not has_tag("vip")', [0]),
        ('has_tag("has_kids") == has_tag("vip")', [1, 2, 3]),
        ('has_tag("has_kids") != in_segment("seg_1")', [0, 1, 2, 3]),
        ('bought("food", 1)', [1]),  # today - last < days: bought today only
        ('bought("food", 2)', [0, 1]),  # ... and yesterday
        ('bought("baby", 70)', []),  # member 3 bought 70 days ago: not within 70
        ('bought("baby", 71)', [3]),
        ('bought("baby", 100.5)', [0, 3]),
        ('bought("toys", 100000)', []),  # a named category nobody bought
        ('bought("garden", 100000)', []),  # an unknown category: never bought
        ('category_orders("food") >= 3', [0]),
        ('category_orders("baby") == 2', [3]),
        ('category_orders("garden") == 0', [0, 1, 2, 3]),
        ('days_since_bought("food") == 1', [0]),
        ('days_since_bought("food") == 0', [1]),
        ('days_since_bought("food") == 100000', [2, 3]),
        ('days_since_bought("garden") >= 100000', [0, 1, 2, 3]),
        ('days_since_bought("baby") == 70', [3]),
        ("orders_90d == 2", [0]),
        ("orders_total / orders_90d > 1", [0]),  # 3/2; 1/1; x/0 is 0
        ("orders_total / 0 == 0 and spend_total / orders_total == aov", [0, 1, 2, 3]),
        ("spend_total / orders_total > 2500", [0]),
        ("days_since_last_order >= 100000", [2, 3]),
        ("tier * 2 - 1 > 0 or points_balance + -50 >= 0", [0, 3]),
        ("7 / 2 == 3.5 and 1 / 3 * 3 <= 1", [0, 1, 2, 3]),
    ],
)
def test_semantics_on_a_hand_built_frame(source: str, members: list[int]) -> None:
    mask = evaluate(parse(source), small_ctx())
    assert mask.dtype == np.bool_ and mask.shape == (4,)
    assert np.flatnonzero(mask).tolist() == members


def test_division_by_zero_is_zero_without_warnings() -> None:
    frame = small_frame()
    frame.columns["aov"] = np.array([0.0, -1.0, 2.0, 1e308])
    ctx = FrameContext(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for source in [
            "1 / orders_90d == 0 or orders_90d > 0",
            "0 / 0 == 0",
            "aov / (aov - aov) == 0",
            "tier / 0 * 5 + 1 == 1",
            "aov * 10 > 0 or aov <= 0",
        ]:
            assert evaluate(parse(source), ctx).all(), source


def test_frame_context_category_arrays_and_cache() -> None:
    ctx = small_ctx()
    first, last, count = ctx.category("baby")
    assert first.tolist() == [900, NEVER, NEVER, 920]
    assert last.tolist() == [900, NEVER, NEVER, 930]
    assert count.tolist() == [1, 0, 0, 2]
    assert ctx.category("baby")[1] is last  # cached per category
    for name in ("toys", "garden"):
        assert [a.tolist() for a in ctx.category(name)] == [[NEVER] * 4, [NEVER] * 4, [0] * 4]


def test_evaluate_returns_a_fresh_mask_and_checks_shapes() -> None:
    ctx = small_ctx()
    mask = evaluate(parse('has_tag("has_kids")'), ctx)
    mask[:] = False
    assert ctx.tag_masks["has_kids"].tolist() == [True, False, False, True]
    assert evaluate(parse("true"), ctx).flags.writeable
    bad = FrameContext(small_frame(), tag_masks={"x": np.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match="3 rows"):
        evaluate(parse('has_tag("x")'), bad)
    with pytest.raises(KeyError, match="churn"):
        evaluate(parse("churn > 1", known_features={"churn"}), bad)
    with pytest.raises(ValueError, match="boolean"):
        evaluate(Feature("tier"), ctx)


# -- helpers --


def test_referenced_helpers() -> None:
    e = parse(
        '(orders_90d >= 2 or spend_90d / orders_90d > aov) and has_tag("宝妈") '
        'and not has_tag("vip") and in_segment("s-1") and bought("母婴", 30) '
        'and category_orders("food") > -days_since_bought("beauty") + tier'
    )
    assert referenced_tags(e) == {"宝妈", "vip"}
    assert referenced_segments(e) == {"s-1"}
    assert referenced_features(e) == {"orders_90d", "spend_90d", "aov", "tier"}
    assert referenced_categories(e) == {"母婴", "food", "beauty"}
    empty = parse("true")
    assert (
        referenced_tags(empty),
        referenced_segments(empty),
        referenced_features(empty),
        referenced_categories(empty),
    ) == (set(), set(), set(), set())


@pytest.mark.parametrize(
    ("source", "only"),
    [
        ("true", True),
        ('has_tag("a") and not (in_segment("s") or false)', True),
        ('has_tag("a") != has_tag("b")', True),
        ('has_tag("a") and tier > 1', False),
        ('not bought("food", 30)', False),
        ("1 > 0", False),
    ],
)
def test_uses_only_bitmaps(source: str, only: bool) -> None:
    assert uses_only_bitmaps(parse(source)) is only


# -- random expressions against a per-member Python reference --

FEATS = ["tier", "orders_90d", "orders_total", "spend_90d", "aov", "days_since_last_order"]
TAGS = ["a", "b", "missing"]
SEGS = ["s1", "s2", "nope"]
CATS = ["food", "baby", "toys", "garden"]  # garden: not in the category dictionary
LEVEL = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7}


def gen_bool(r: random.Random, depth: int) -> tuple:
    k = r.randrange(10 if depth > 0 else 5)
    if k == 0:
        return ("tag", r.choice(TAGS))
    if k == 1:
        return ("seg", r.choice(SEGS))
    if k == 2:
        return ("bought", r.choice(CATS), r.choice([1, 7, 30, 90.5, 400]))
    if k == 3:
        return ("const", r.random() < 0.5)
    if k == 4:
        return (
            "cmp",
            r.choice(["<", "<=", ">", ">=", "==", "!="]),
            gen_num(r, depth - 1),
            gen_num(r, depth - 1),
        )
    if k in (5, 6):
        return (r.choice(["and", "or"]), gen_bool(r, depth - 1), gen_bool(r, depth - 1))
    if k == 7:
        return ("not", gen_bool(r, depth - 1))
    if k == 8:
        return ("cmp", r.choice(["==", "!="]), gen_bool(r, depth - 1), gen_bool(r, depth - 1))
    return ("cmp", r.choice(["<", ">=", "=="]), gen_num(r, depth - 1), gen_num(r, depth - 1))


def gen_num(r: random.Random, depth: int) -> tuple:
    k = r.randrange(7 if depth > 0 else 4)
    if k == 0:
        return ("num", r.choice([0, 1, 2, 3, 10, 0.5, 2.25, 1000]))
    if k == 1:
        return ("feat", r.choice(FEATS))
    if k == 2:
        return ("corders", r.choice(CATS))
    if k == 3:
        return ("dsb", r.choice(CATS))
    if k == 4:
        return ("neg", gen_num(r, depth - 1))
    return (r.choice("+-*/"), gen_num(r, depth - 1), gen_num(r, depth - 1))


def render(t: tuple, minimal: bool) -> tuple[str, int]:
    """(source, precedence level); `minimal` leaves out every parenthesis it can."""

    def wrap(sub: tuple, ok: bool) -> str:
        text, _ = render(sub, minimal)
        return text if ok and minimal else f"({text})"

    kind = t[0]
    if kind in ("and", "or", "+", "-", "*", "/"):
        lv = LEVEL[kind]
        return (
            f"{wrap(t[1], render(t[1], minimal)[1] >= lv)} {kind} "
            f"{wrap(t[2], render(t[2], minimal)[1] > lv)}",
            lv,
        )
    if kind == "cmp":
        return (
            f"{wrap(t[2], render(t[2], minimal)[1] > 4)} {t[1]} "
            f"{wrap(t[3], render(t[3], minimal)[1] > 4)}",
            4,
        )
    if kind == "not":
        return f"not {wrap(t[1], render(t[1], minimal)[1] >= 3)}", 3
    if kind == "neg":
        return f"-{wrap(t[1], render(t[1], minimal)[1] >= 7)}", 7
    atom = {
        "tag": lambda: f'has_tag("{t[1]}")',
        "seg": lambda: f"in_segment('{t[1]}')",
        "bought": lambda: f'bought("{t[1]}", {t[2]})',
        "const": lambda: "true" if t[1] else "false",
        "num": lambda: str(t[1]),
        "feat": lambda: t[1],
        "corders": lambda: f'category_orders("{t[1]}")',
        "dsb": lambda: f'days_since_bought("{t[1]}")',
    }[kind]()
    return atom, 8


class Data:
    """Random members, their tags, segments and categories, kept as plain Python too."""

    def __init__(self, seed: int, n: int) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.today = n, 20_000
        cols = {f: rng.integers(0, 4, n).astype(np.int64) for f in FEATURES}
        cols["aov"] = rng.choice([0.0, 0.5, 1.0, 2.5, 1000.0], n)
        cols["days_since_last_order"] = rng.choice([0, 1, 30, NEVER_DAYS], n).astype(np.int64)
        ncat = rng.integers(0, 4, n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(ncat)
        # distinct category ids per member: 0 food, 1 baby, 2 toys, 3 not in the dictionary
        ids = np.concatenate([rng.permutation([0, 1, 3, 2])[:k] for k in ncat]).astype(np.int32)
        m = len(ids)
        last = self.today - rng.choice([0, 1, 6, 7, 29, 30, 90, 91, 399, 400, 5000], m)
        self.frame = FeatureFrame(
            idx=(np.arange(n) * 3 + 5).astype(np.uint32),
            today=self.today,
            columns=cols,
            cat_offsets=offsets,
            cat_id=ids,
            cat_first_day=(last - 10).astype(np.int32),
            cat_last_day=last.astype(np.int32),
            cat_count=rng.integers(1, 5, m).astype(np.int32),
        )
        self.tags = {"a": rng.random(n) < 0.5, "b": rng.random(n) < 0.3}
        self.segs = {"s1": rng.random(n) < 0.5, "s2": rng.random(n) < 0.1}
        self.cat_ids = {"food": 0, "baby": 1, "toys": 2}
        self.ctx = FrameContext(self.frame, self.tags, self.segs, self.cat_ids)

    def cat(self, i: int, name: str) -> tuple[int, int]:
        """(last_day, count) of member i in category `name`, by a plain scan."""
        cid = self.cat_ids.get(name)
        for k in range(self.frame.cat_offsets[i], self.frame.cat_offsets[i + 1]):
            if self.frame.cat_id[k] == cid:
                return int(self.frame.cat_last_day[k]), int(self.frame.cat_count[k])
        return NEVER, 0


def ref(t: tuple, d: Data, i: int) -> bool | float:
    """The meaning of the generator's own tree, for member i, in plain Python."""
    kind = t[0]
    if kind == "tag":
        return bool(d.tags.get(t[1], np.zeros(d.n, bool))[i])
    if kind == "seg":
        return bool(d.segs.get(t[1], np.zeros(d.n, bool))[i])
    if kind == "bought":
        last, _ = d.cat(i, t[1])
        return last != NEVER and d.today - last < t[2]
    if kind == "const":
        return t[1]
    if kind == "num":
        return float(t[1])
    if kind == "feat":
        return float(d.frame.columns[t[1]][i])
    if kind == "corders":
        return float(d.cat(i, t[1])[1])
    if kind == "dsb":
        last, _ = d.cat(i, t[1])
        return float(d.today - last if last != NEVER else NEVER_DAYS)
    if kind == "not":
        return not ref(t[1], d, i)
    if kind == "neg":
        return -ref(t[1], d, i)
    if kind == "cmp":
        a, b = ref(t[2], d, i), ref(t[3], d, i)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[
            t[1]
        ]
    a, b = ref(t[1], d, i), ref(t[2], d, i)
    if kind == "and":
        return a and b
    if kind == "or":
        return a or b
    if kind == "+":
        return a + b
    if kind == "-":
        return a - b
    if kind == "*":
        return a * b
    return a / b if b != 0 else 0.0


@pytest.mark.parametrize("seed", range(4))
def test_evaluate_matches_a_per_member_reference(seed: int) -> None:
    r = random.Random(seed)
    d = Data(seed, 80)
    for _ in range(150):
        tree = gen_bool(r, r.randrange(1, 5))
        source, _ = render(tree, minimal=r.random() < 0.6)
        got = evaluate(parse(source), d.ctx)
        want = np.array([ref(tree, d, i) for i in range(d.n)], dtype=bool)
        assert got.tolist() == want.tolist(), source


def test_minimal_and_full_parentheses_parse_the_same() -> None:
    r = random.Random(99)
    for _ in range(300):
        tree = gen_bool(r, 4)
        minimal, full = render(tree, minimal=True)[0], render(tree, minimal=False)[0]
        assert sx(parse(minimal)) == sx(parse(full)), (minimal, full)


# -- bitmap evaluation --


class RecordingBitmapContext(FrameBitmapContext):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.handed: list[Expr] = []

    def mask_to_bitmap(self, expr: Expr) -> BitMap:
        self.handed.append(expr)
        return super().mask_to_bitmap(expr)


def bitmap_ctx(d: Data) -> RecordingBitmapContext:
    idx = d.frame.idx
    tags = {k: bitmap_from_indexes(idx[v]) for k, v in d.tags.items()}
    tags["a"].add(1)  # a stale index outside the universe must not leak into results
    segs = {k: bitmap_from_indexes(idx[v]) for k, v in d.segs.items()}
    return RecordingBitmapContext(d.ctx, tags, segs)


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_bitmap_equals_the_true_rows_of_evaluate(seed: int) -> None:
    r = random.Random(100 + seed)
    d = Data(seed, 120)
    for _ in range(150):
        expr = parse(render(gen_bool(r, r.randrange(1, 5)), minimal=True)[0])
        ctx = bitmap_ctx(d)
        got = evaluate_bitmap(expr, ctx)
        assert set(got) == set(d.frame.idx[evaluate(expr, d.ctx)].tolist()), expr
        for sub in ctx.handed:  # data subtrees only: no tag, no segment
            assert not referenced_tags(sub) and not referenced_segments(sub)
        if uses_only_bitmaps(expr):
            assert ctx.handed == []


def test_evaluate_bitmap_groups_data_operands_into_one_call() -> None:
    d = Data(7, 50)
    ctx = bitmap_ctx(d)
    expr = parse(
        'orders_90d >= 2 and has_tag("a") and not in_segment("s1") and tier < 3 '
        'and bought("food", 30)'
    )
    got = evaluate_bitmap(expr, ctx)
    assert set(got) == set(d.frame.idx[evaluate(expr, d.ctx)].tolist())
    assert ctx.handed == [parse('orders_90d >= 2 and tier < 3 and bought("food", 30)')]


def test_evaluate_bitmap_pure_bitmap_algebra() -> None:
    d = Data(8, 40)
    ctx = bitmap_ctx(d)
    universe, a, s1 = ctx.universe, ctx.tag_bitmaps["a"] & ctx.universe, ctx.segment_bitmaps["s1"]
    assert evaluate_bitmap(parse("true"), ctx) == universe
    assert evaluate_bitmap(parse("false"), ctx) == BitMap()
    assert evaluate_bitmap(parse('has_tag("a")'), ctx) == a
    assert 1 not in evaluate_bitmap(parse('has_tag("a")'), ctx)
    assert evaluate_bitmap(parse('not has_tag("a")'), ctx) == universe - a
    assert evaluate_bitmap(parse('has_tag("a") or in_segment("s1")'), ctx) == a | s1
    assert evaluate_bitmap(parse('has_tag("a") != in_segment("s1")'), ctx) == a ^ s1
    assert evaluate_bitmap(parse('has_tag("a") == in_segment("s1")'), ctx) == universe - (a ^ s1)
    assert evaluate_bitmap(parse('has_tag("zzz") or in_segment("zzz")'), ctx) == BitMap()
    assert ctx.handed == []
    before = BitMap(universe)
    evaluate_bitmap(parse("true"), ctx).clear()
    assert ctx.universe == before  # results are new bitmaps
