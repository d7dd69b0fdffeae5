"""The rule and segment expression language: parse, check, evaluate over all members.

    orders_90d >= 2 and has_tag("has_kids") and not has_tag("vip_group")

A hand-written tokenizer and recursive-descent parser build an immutable, type-checked
AST; user text is never handed to Python's eval, compile or ast. Grammar:

    expr := or ;  or := and ('or' and)* ;  and := not ('and' not)* ;  not := 'not' not | cmp
    cmp  := sum (('<'|'<='|'>'|'>='|'=='|'!=') sum)? ;  sum := term (('+'|'-') term)*
    term := unary (('*'|'/') unary)* ;  unary := '-' unary | atom
    atom := NUMBER | FEATURE | 'true' | 'false' | IDENT '(' [arg (',' arg)*] ')' | '(' expr ')'

`evaluate` computes a boolean mask over every member at once with numpy (float64
arithmetic, x / 0 == 0). Bitmap evaluation for segments lives in segment_eval.py."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from services.tagging.domain.features import FEATURES

MAX_LENGTH = 2000
MAX_DEPTH = 50
BOOL, NUM, STR = "boolean", "number", "string"
_A = {BOOL: "a boolean", NUM: "a number", STR: "a string"}


class ExpressionError(Exception):
    """A rule that cannot be parsed or does not type-check; `position` is a 0-based
    character offset into the source."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"at {position}: {message}")
        self.position = position
        self.message = message


# -- AST: frozen dataclasses; `pos` is where the node starts (not part of equality) --


@dataclass(frozen=True, slots=True)
class Num:
    value: int | float
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # a key of FUNCTIONS
    args: tuple[str | int | float, ...]
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Expr, ...]  # two or more
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Compare:
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Expr
    right: Expr
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Arith:
    """operands[0] ops[0] operands[1] ops[1] ..., left to right, one precedence level."""

    ops: tuple[Literal["+", "-", "*", "/"], ...]
    operands: tuple[Expr, ...]  # len(ops) + 1
    pos: int = field(default=0, compare=False)


Expr = Num | Bool | Feature | Call | Not | Neg | BoolOp | Compare | Arith


class FunctionSpec(NamedTuple):
    params: tuple[tuple[str, str], ...]  # (type, what it is)
    result: str


FUNCTIONS: dict[str, FunctionSpec] = {
    "has_tag": FunctionSpec(((STR, "tag name"),), BOOL),
    "in_segment": FunctionSpec(((STR, "segment id"),), BOOL),
    "bought": FunctionSpec(((STR, "category"), (NUM, "days")), BOOL),
    "category_orders": FunctionSpec(((STR, "category"),), NUM),
    "days_since_bought": FunctionSpec(((STR, "category"),), NUM),
}
_CATEGORY_FUNCTIONS = ("bought", "category_orders", "days_since_bought")


def type_of(expr: Expr) -> str:
    """BOOL or NUM (the parser guarantees operands are consistent)."""
    if isinstance(expr, Call):
        return FUNCTIONS[expr.name].result
    return BOOL if isinstance(expr, Bool | Not | BoolOp | Compare) else NUM


# -- tokenizer --


class _Tok(NamedTuple):
    kind: str  # "num", "str", "ident", "kw", "op", "eof"
    text: str
    pos: int
    value: str | int | float | None = None


_KEYWORDS = {"and", "or", "not", "true", "false"}
_OPS2 = {"<=", ">=", "==", "!="}
_OPS1 = set("<>+-*/(),")
_HINTS = {"=": "did you mean '=='?", "!": "use 'not'", "&": "use 'and'", "|": "use 'or'"}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'"}
_IDENT_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_DIGITS = set("0123456789")
_IDENT_CHARS = _IDENT_START | _DIGITS


def _tokenize(src: str) -> Iterator[_Tok]:
    """Tokens on demand, so that errors are reported in reading order."""
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
        elif c in _DIGITS:
            j = i
            while j < n and src[j] in _DIGITS:
                j += 1
            if j + 1 < n and src[j] == "." and src[j + 1] in _DIGITS:
                j += 1
                while j < n and src[j] in _DIGITS:
                    j += 1
            k = j
            while k < n and (src[k] in _IDENT_CHARS or src[k] == "."):
                k += 1
            if k > j:
                raise ExpressionError(i, f"malformed number {src[i:k]!r}")
            text = src[i:j]
            if float(text) == float("inf"):
                raise ExpressionError(i, "number too large")
            yield _Tok("num", text, i, float(text) if "." in text else int(text))
            i = j
        elif c in _IDENT_START:
            j = i
            while j < n and src[j] in _IDENT_CHARS:
                j += 1
            yield _Tok("kw" if src[i:j] in _KEYWORDS else "ident", src[i:j], i)
            i = j
        elif c in "\"'":
            j, chars = i + 1, []
            while j < n and src[j] != c and src[j] != "\n":
                if src[j] == "\\":
                    if j + 1 >= n or src[j + 1] not in _ESCAPES:
                        raise ExpressionError(j, "unknown escape in string (use \\\\, \\\" or \\')")
                    j += 1
                chars.append(src[j])
                j += 1
            if j >= n or src[j] != c:
                raise ExpressionError(i, "unterminated string")
            yield _Tok("str", src[i : j + 1], i, "".join(chars))
            i = j + 1
        elif src[i : i + 2] in _OPS2:
            yield _Tok("op", src[i : i + 2], i)
            i += 2
        elif c in _OPS1:
            yield _Tok("op", c, i)
            i += 1
        else:
            hint = f" ({_HINTS[c]})" if c in _HINTS else ""
            raise ExpressionError(i, f"unexpected character {c!r}{hint}")
    yield _Tok("eof", "", n)


def _describe(tok: _Tok) -> str:
    if tok.kind == "eof":
        return "end of expression"
    if tok.kind == "ident" and tok.text.lower() in _KEYWORDS:
        return f"{tok.text!r} (keywords are lower-case: {tok.text.lower()!r})"
    return {"num": "number ", "str": "string "}.get(tok.kind, "") + repr(tok.text)


def _suggest(name: str, choices: Set[str] | Mapping[str, object]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- parser --


class _Parser:
    def __init__(self, src: str, known_features: Set[str]) -> None:
        self.tokens = _tokenize(src)
        self.toks: list[_Tok] = []
        self.i = 0
        self.depth = 0
        self.known = known_features

    def peek(self) -> _Tok:
        while len(self.toks) <= self.i:  # past the end: the end again
            self.toks.append(next(self.tokens, None) or self.toks[-1])
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind in ("op", "kw") and tok.text in texts

    def nest(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(tok.pos, f"nested deeper than {MAX_DEPTH} levels")

    @staticmethod
    def need(node: Expr, want: str, who: str) -> None:
        got = type_of(node)
        if got != want:
            raise ExpressionError(node.pos, f"{who} needs {_A[want]}, got {_A[got]}")

    def expr(self) -> Expr:
        return self.chain(("or",), self.and_)

    def and_(self) -> Expr:
        return self.chain(("and",), self.not_)

    def chain(self, ops: tuple[str, ...], operand: Callable[[], Expr]) -> Expr:
        """One left-associative precedence level, kept n-ary (so long chains stay shallow)."""
        first = operand()
        seen: list[str] = []
        nodes = [first]
        while self.at(*ops):
            seen.append(self.take().text)
            nodes.append(operand())
        if not seen:
            return first
        for op, node in zip([seen[0], *seen], nodes, strict=True):
            self.need(node, BOOL if op in ("and", "or") else NUM, repr(op))
        if ops[0] in ("and", "or"):
            return BoolOp(ops[0], tuple(nodes), first.pos)  # type: ignore[arg-type]
        return Arith(tuple(seen), tuple(nodes), first.pos)  # type: ignore[arg-type]

    def not_(self) -> Expr:
        if not self.at("not"):
            return self.cmp()
        tok = self.take()
        self.nest(tok)
        operand = self.not_()
        self.depth -= 1
        self.need(operand, BOOL, "'not'")
        return Not(operand, tok.pos)

    def cmp(self) -> Expr:
        left = self.chain(("+", "-"), self.term)
        if not self.at("<", "<=", ">", ">=", "==", "!="):
            return left
        op = self.take().text
        right = self.chain(("+", "-"), self.term)
        if op in ("==", "!="):
            if type_of(left) != type_of(right):
                raise ExpressionError(
                    right.pos,
                    f"'{op}' cannot compare {_A[type_of(left)]} with {_A[type_of(right)]}",
                )
        else:
            self.need(left, NUM, repr(op))
            self.need(right, NUM, repr(op))
        if self.at("<", "<=", ">", ">=", "==", "!="):
            raise ExpressionError(self.peek().pos, "comparisons cannot be chained; use 'and'")
        return Compare(op, left, right, left.pos)  # type: ignore[arg-type]

    def term(self) -> Expr:
        return self.chain(("*", "/"), self.unary)

    def unary(self) -> Expr:
        if not self.at("-"):
            return self.atom()
        tok = self.take()
        self.nest(tok)
        operand = self.unary()
        self.depth -= 1
        self.need(operand, NUM, "'-'")
        return Neg(operand, tok.pos)

    def atom(self) -> Expr:
        tok = self.take()
        if tok.kind == "num":
            return Num(tok.value, tok.pos)  # type: ignore[arg-type]
        if tok.kind == "kw" and tok.text in ("true", "false"):
            return Bool(tok.text == "true", tok.pos)
        if tok.kind == "op" and tok.text == "(":
            self.nest(tok)
            inner = self.expr()
            if not self.at(")"):
                raise ExpressionError(
                    self.peek().pos,
                    f"expected ')' to close '(' at {tok.pos}, got {_describe(self.peek())}",
                )
            self.take()
            self.depth -= 1
            return replace(inner, pos=tok.pos)
        if tok.kind == "ident":
            return self.call(tok) if self.at("(") else self.feature(tok)
        if tok.kind == "str":
            raise ExpressionError(
                tok.pos, 'a string can only be a function argument, as in has_tag("...")'
            )
        raise ExpressionError(tok.pos, f"expected a value, got {_describe(tok)}")

    def feature(self, tok: _Tok) -> Expr:
        if tok.text in self.known:
            return Feature(tok.text, tok.pos)
        if tok.text in FUNCTIONS:
            raise ExpressionError(
                tok.pos, f"{tok.text!r} is a function: call it as {tok.text}(...)"
            )
        if tok.text.lower() in _KEYWORDS:
            raise ExpressionError(tok.pos, f"unexpected {_describe(tok)}")
        raise ExpressionError(
            tok.pos, f"unknown feature {tok.text!r}{_suggest(tok.text, self.known)}"
        )

    def call(self, name: _Tok) -> Expr:
        if name.text not in FUNCTIONS:
            what = (
                "is a feature, not a function"
                if name.text in self.known
                else f"is an unknown function{_suggest(name.text, FUNCTIONS)}"
            )
            raise ExpressionError(name.pos, f"{name.text!r} {what}")
        spec = FUNCTIONS[name.text]
        self.take()  # (
        args: list[_Tok] = []
        close = self.take() if self.at(")") else None
        while close is None:
            tok = self.take()
            if tok.kind not in ("str", "num"):
                hint = f' (quote it: "{tok.text}")' if tok.kind == "ident" else ""
                raise ExpressionError(
                    tok.pos,
                    f"arguments of {name.text}() must be quoted "
                    f"strings or numbers, got {_describe(tok)}{hint}",
                )
            args.append(tok)
            nxt = self.take()
            if not (nxt.kind == "op" and nxt.text in (",", ")")):
                raise ExpressionError(nxt.pos, f"expected ',' or ')', got {_describe(nxt)}")
            close = nxt if nxt.text == ")" else None
        want = ", ".join(what for _, what in spec.params)
        if len(args) != len(spec.params):
            pos = args[len(spec.params)].pos if len(args) > len(spec.params) else close.pos
            plural = "s" if len(spec.params) > 1 else ""
            raise ExpressionError(
                pos,
                f"{name.text}() takes {len(spec.params)} argument{plural}"
                f" ({want}), got {len(args)}",
            )
        for k, (tok, (kind, what)) in enumerate(zip(args, spec.params, strict=True), 1):
            got = STR if tok.kind == "str" else NUM
            if got != kind:
                raise ExpressionError(
                    tok.pos,
                    f"argument {k} of {name.text}() ({what}) must be {_A[kind]}, got {_A[got]}",
                )
            if tok.value == "":
                raise ExpressionError(tok.pos, f"argument {k} of {name.text}() ({what}) is empty")
        return Call(name.text, tuple(t.value for t in args), name.pos)  # type: ignore[misc]


def parse(source: str, *, known_features: Set[str] = frozenset(FEATURES)) -> Expr:
    """Parse and type-check a rule or segment; the result is always a boolean expression.
    Raises ExpressionError (with the offending position) for anything else."""
    if not isinstance(source, str):
        raise TypeError(f"an expression is a str, not {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            MAX_LENGTH, f"expression too long ({len(source)} characters; at most {MAX_LENGTH})"
        )
    p = _Parser(source, known_features)
    if p.peek().kind == "eof":
        raise ExpressionError(0, "empty expression")
    expr = p.expr()
    if p.peek().kind != "eof":
        tok = p.peek()
        extra = " (no matching '(')" if tok.text == ")" and tok.kind == "op" else ""
        raise ExpressionError(tok.pos, f"unexpected {_describe(tok)}{extra}")
    if type_of(expr) != BOOL:
        raise ExpressionError(expr.pos, "a rule must be a condition (true/false), got a number")
    return expr


# -- inspection --


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node, parents before children."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Not | Neg):
            stack.append(node.operand)
        elif isinstance(node, BoolOp | Arith):
            stack.extend(reversed(node.operands))
        elif isinstance(node, Compare):
            stack.extend((node.right, node.left))


def _call_args(expr: Expr, names: tuple[str, ...]) -> set[str]:
    return {n.args[0] for n in walk(expr) if isinstance(n, Call) and n.name in names}  # type: ignore[misc]


def referenced_tags(expr: Expr) -> set[str]:
    return _call_args(expr, ("has_tag",))


def referenced_segments(expr: Expr) -> set[str]:
    return _call_args(expr, ("in_segment",))


def referenced_categories(expr: Expr) -> set[str]:
    return _call_args(expr, _CATEGORY_FUNCTIONS)


def referenced_features(expr: Expr) -> set[str]:
    return {n.name for n in walk(expr) if isinstance(n, Feature)}


def _bitmap_node(node: Expr) -> bool:
    if isinstance(node, Call):
        return node.name in ("has_tag", "in_segment")
    if isinstance(node, Compare):  # boolean == / != is xor: still a bitmap operation
        return node.op in ("==", "!=") and type_of(node.left) == BOOL
    return isinstance(node, Bool | Not | BoolOp)


def uses_only_bitmaps(expr: Expr) -> bool:
    """True when only has_tag, in_segment, true, false and boolean operators appear
    (including == / != between booleans): no feature or category data is needed."""
    return all(_bitmap_node(n) for n in walk(expr))


# -- vectorised evaluation --
