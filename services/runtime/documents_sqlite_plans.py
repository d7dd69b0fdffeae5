"""The SQLite document store's find plans: a find's SQL, its parameters, and whether
it runs on the event loop's point reader (an index seek of at most _POINT_LIMIT rows)
or on a reader thread. Plans are kept per query shape (fields, value types, order,
limit) for the hot path's finds, plain equalities, so a repeated find only reads its
values out of `where`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from services.runtime.documents import Order
from services.runtime.documents_query import Term, check_limit, parse_order, parse_where
from services.runtime.documents_sqlite_tables import Table, q, where_sql

POINT_LIMIT = 1000  # the largest find on the event loop
_PLANS = 256  # plans kept (query shapes, not values; cleared when full)
_PLAIN = (str, int, float, bool)


class FindPlan(NamedTuple):
    sql: str | None  # None: nothing to read (limit 0)
    on_loop: bool
    param_fields: tuple[str, ...]  # where's fields whose values are the parameters
    params: list[Any]  # the parameters of the query the plan was made for


class FindPlans:
    def __init__(self) -> None:
        self._kept: dict[tuple[Any, ...], FindPlan] = {}

    def plan(
        self, t: Table, where: Mapping[str, Any] | None, order: Order, limit: int | None
    ) -> tuple[FindPlan, list[Any]]:
        """The plan for this find and its parameters."""
        key = _plan_key(t, where, order, limit)
        plan = self._kept.get(key) if key is not None else None
        if plan is None:
            plan = _plan(t, where, order, limit)
            if key is not None:
                if len(self._kept) >= _PLANS:
                    self._kept.clear()
                self._kept[key] = plan
            return plan, plan.params
        assert where is not None  # the same shape of query as before: only values differ
        return plan, [where[f] for f in plan.param_fields]


def _plan_key(
    t: Table, where: Mapping[str, Any] | None, order: Order, limit: int | None
) -> tuple[Any, ...] | None:
    """What decides a find's SQL when `where` holds plain equalities (the hot path's
    finds): the fields, each value's type (the value itself for a field a partial index
    filters on, which may be written into the SQL as a literal), order and limit.
    None for anything else (operators, None, lists), which is planned every time."""
    if not where or type(limit) not in (int, type(None)):
        return None
    shape = []
    literal = t.literal_fields
    for field, value in where.items():
        kind = type(value)
        if kind not in _PLAIN:
            return None
        shape.append((field, kind, value) if field in literal else (field, kind))
    try:
        return (t.name, tuple(shape), tuple(order) if not isinstance(order, str) else order,
                limit)
    except TypeError:
        return None


def _plan(t: Table, where: Mapping[str, Any] | None, order: Order, limit: int | None) -> FindPlan:
    terms = parse_where(t.c, where)
    keys = parse_order(t.c, order)
    check_limit(limit)
    if limit == 0:
        return FindPlan(None, False, (), [])
    cond, params = where_sql(terms, t.partial_terms)
    sql = f"SELECT {t.columns} FROM {q(t.name)}"
    if cond:
        sql += f" WHERE {cond}"
    sql += " ORDER BY " + ", ".join(f"{q(f)} DESC" if desc else q(f) for f, desc in keys)
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    on_loop = limit is not None and limit <= POINT_LIMIT and _seeks(t, terms)
    # Plain equalities only (what _plan_key caches): each one not written as a
    # literal is one parameter, in the where's order.
    param_fields = tuple(term.field for term in terms if term not in t.partial_terms)
    return FindPlan(sql, on_loop, param_fields, params)


def _seeks(t: Table, terms: tuple[Term, ...]) -> bool:
    """Whether the terms pin an index's first field by equality: an index seek."""
    pinned = {term.field for term in terms if term.op in ("$eq", "$in")}
    given = frozenset(terms)
    return any(f in pinned and needs <= given for f, needs in t.seek)
