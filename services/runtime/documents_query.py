"""What the two document engines share: checking a schema and a document, and reading a
query of the subset that services.runtime.documents describes into terms, which each
engine translates (SQL, a MongoDB filter) and `matches` evaluates in Python.

Both engines refuse the same things here, before any I/O, so a query or a document that
one engine accepts the other accepts too."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.runtime.documents import Collection, Doc, Order, Schema, UnitOfWork

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
RANGE = frozenset({"$lt", "$lte", "$gt", "$gte"})
OPS = frozenset({"$in", "$nin", "$ne", *RANGE})
_SCALARS = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)


@dataclass(frozen=True, slots=True)
class Term:
    """One condition: `op` is "$eq" for equality or one of OPS; `value` a scalar, or a
    tuple of scalars for $in and $nin."""

    field: str
    op: str
    value: Any


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} {name!r}: letters, digits and _, starting with a letter"
        )


def check_schema(schema: Schema) -> None:
    """Names the engines can use as tables, columns and collections (a leading "_"
    is the runtime's own), partial filters both engines can index."""
    _check_name("service", schema.service)
    seen: set[str] = set()
    for c in schema.collections:
        _check_name("collection", c.name)
        if c.name in seen:
            raise ValueError(f"collection {c.name!r} declared twice")
        seen.add(c.name)
        if c.key_type not in (str, int):
            raise ValueError(f"{c.name}: key_type is str or int")
        for f in c.queryable - {"_id"}:
            _check_name(f"{c.name}: queryable field", f)
        if c.blob is not None:
            _check_name(f"{c.name}: blob field", c.blob)
            if c.blob in c.queryable:
                raise ValueError(f"{c.name}: the blob field {c.blob!r} cannot be queryable")
        for index in c.indexes:
            if not index.fields:
                raise ValueError(f"{c.name}: an index needs fields")
            if index.partial is not None:
                for term in parse_where(c, index.partial):
                    if (term.op != "$eq" and term.op not in RANGE) or term.value is None:
                        raise ValueError(
                            f"{c.name}: a partial filter holds equalities and $lt/$lte/$gt/$gte"
                            " on values that are not None (what MongoDB can index)"
                        )
    for name in schema.sequences:
        _check_name("sequence", name)


def _scalar(c: Collection, field: str, value: Any) -> Any:
    if not isinstance(value, _SCALARS):
        raise ValueError(
            f"{c.name}.{field}: queries compare str, int, float, bool or None, not {value!r}"
        )
    return value


def parse_where(c: Collection, where: Mapping[str, Any] | None) -> tuple[Term, ...]:
    """The terms of `where` (all must hold), or ValueError for anything outside the
    subset or on a field the collection does not declare queryable."""
    if not where:
        return ()
    queryable = c.queryable
    terms: list[Term] = []
    for field, cond in where.items():
        if field not in queryable:
            raise ValueError(
                f"{c.name}.{field} is not queryable: declare it in an index or in `fields`"
            )
        if isinstance(cond, Mapping):
            if not cond:
                raise ValueError(f"{c.name}.{field}: an empty condition")
            for op, value in cond.items():
                if op not in OPS:
                    raise ValueError(f"{c.name}.{field}: {op!r} is outside the query subset")
                if op in ("$in", "$nin"):
                    if not isinstance(value, list | tuple):
                        raise ValueError(f"{c.name}.{field}: {op} takes a list")
                    terms.append(Term(field, op, tuple(_scalar(c, field, v) for v in value)))
                elif op in RANGE and value is None:
                    raise ValueError(f"{c.name}.{field}: {op} None compares nothing")
                else:
                    terms.append(Term(field, op, _scalar(c, field, value)))
        else:
            terms.append(Term(field, "$eq", _scalar(c, field, cond)))
    return tuple(terms)


def parse_order(c: Collection, order: Order) -> tuple[tuple[str, bool], ...]:
    """(field, descending) pairs, ending with `_id` ascending to break ties."""
    if isinstance(order, str):
        order = (order,)
    keys: list[tuple[str, bool]] = []
    for spec in order:
        field = spec.lstrip("-")
        if field not in c.queryable:
            raise ValueError(f"{c.name}.{field} is not queryable, so cannot order")
        keys.append((field, spec.startswith("-")))
    if all(f != "_id" for f, _ in keys):
        keys.append(("_id", False))
    return tuple(keys)


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit is a count >= 0, not {limit!r}")


@dataclass(frozen=True)
class DocumentRules:
    """A collection's checks on every document an engine writes, worked out once:
    a missing or mistyped `_id`; a queryable field holding a list, a dict or bytes;
    anything but bytes in the blob field; a unique index's field missing or None in a
    document the index covers (MongoDB would index those as null, SQLite would let
    them repeat)."""

    collection: Collection
    fields: tuple[str, ...]  # the queryable fields but `_id`, in a fixed order
    unique: tuple[tuple[tuple[str, ...], tuple[Term, ...] | None], ...]

    @classmethod
    def of(cls, c: Collection) -> DocumentRules:
        unique = tuple(
            (
                tuple(f.lstrip("-") for f in index.fields),
                None if index.partial is None else parse_where(c, index.partial),
            )
            for index in c.indexes
            if index.unique
        )
        return cls(c, tuple(sorted(c.queryable - {"_id"})), unique)

    def check(self, doc: Doc) -> None:
        c = self.collection
        get = doc.get
        key = get("_id")
        if type(key) is not c.key_type:
            raise ValueError(f"{c.name}: _id is a {c.key_type.__name__}, not {key!r}")
        for f in self.fields:  # on every write: the exact types first, subclasses after
            value = get(f)
            if type(value) not in _SCALAR_TYPES and not isinstance(value, _SCALARS):
                raise ValueError(f"{c.name}/{key}: queryable field {f!r} holds {value!r}")
        if c.blob is not None:
            blob = doc.get(c.blob)
            if blob is not None and not isinstance(blob, bytes):
                raise ValueError(f"{c.name}/{key}: the blob field {c.blob!r} holds bytes")
        for fields, partial in self.unique:
            if partial is None or matches(doc, partial):
                for f in fields:
                    if doc.get(f) is None:
                        raise ValueError(f"{c.name}/{key}: unique index field {f!r} is required")


def guard_version(collection: str, doc: Doc) -> int:
    """The `_v` a guarded write was read with."""
    version = doc.get("_v")
    if type(version) is not int:
        raise ValueError(f"{collection}/{doc.get('_id')}: a guarded write needs the _v it read")
    return version


def check_unit(rules: Mapping[str, DocumentRules], uow: UnitOfWork) -> None:
    """Every document of `uow` checked, before anything is written."""
    for op, collection, arg in uow.ops:
        if op in ("insert", "replace", "put"):
            rules[collection].check(arg)
        elif op == "put_many":
            for doc in arg:
                rules[collection].check(doc)
        if op == "replace":
            guard_version(collection, arg)


def index_fields(c: Collection, fields: Sequence[str]) -> tuple[str, ...]:
    """The fields of `c`'s index on `fields`, as declared (with "-" for descending)."""
    for index in c.indexes:
        if tuple(f.lstrip("-") for f in index.fields) == tuple(fields):
            return index.fields
    return tuple(fields)


# -- evaluation in Python, with MongoDB's semantics for the subset --


def _kind(value: Any) -> int:
    # MongoDB compares values of one type only (bool is not a number there).
    if value is None:
        return 0
    if isinstance(value, bool):
        return 3
    if isinstance(value, int | float):
        return 1
    return 2


def _equal(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _holds(value: Any, term: Term) -> bool:
    op, want = term.op, term.value
    if op == "$eq":
        return _equal(value, want)
    if op == "$ne":
        return not _equal(value, want)
    if op == "$in":
        return any(_equal(value, w) for w in want)
    if op == "$nin":
        return not any(_equal(value, w) for w in want)
    if value is None or _kind(value) != _kind(want):
        return False
    if op == "$lt":
        return bool(value < want)
    if op == "$lte":
        return bool(value <= want)
    if op == "$gt":
        return bool(value > want)
    return bool(value >= want)


def matches(doc: Mapping[str, Any], terms: Sequence[Term]) -> bool:
    """Whether `doc` matches every term (a missing field counts as None)."""
    return all(_holds(doc.get(t.field), t) for t in terms)
