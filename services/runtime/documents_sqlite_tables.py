"""How a document Schema lays out in SQLite, and how open() creates and evolves it.

One table per collection, named after it:
    _id     TEXT or INTEGER PRIMARY KEY (the collection's key_type)
    _v      the version
    <f>     one column per queryable field (no declared type, so values keep their
            type), a copy of the document's value, for WHERE, ORDER BY and indexes
    _doc    the whole document but the blob field, as orjson's JSON (UTF-8 bytes: no
            decoding on the hot path; `CAST(_doc AS TEXT)` in the sqlite3 shell). Its
            `_v` may be stale: the column is the truth.
    _blob   the blob field's bytes, if the collection names one
Indexes are named `ix_<collection>_<digest of their definition>`; a partial filter
becomes the index's WHERE, with its values written literally (a query carrying the
same condition is written the same way, so SQLite can use the index).

Evolution, at every open, idempotently, in one transaction: a new queryable field is
added as a column and filled from `_doc`; a field no longer queryable loses its column;
an index no longer declared is dropped, a new one created (a unique one over data that
repeats fails the open, saying which). Nothing else about a collection may change in
place (its key type, for one).

The runtime's own records live in tables prefixed `_`, which collection names cannot be:
_outbox (seq AUTOINCREMENT, event), _idempotency, _processed, _timers and _sequences.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import orjson

from services.runtime.documents import Collection, Doc, DuplicateKey
from services.runtime.documents_query import DocumentRules, Term, index_fields, parse_where

_RESERVED = frozenset({"_id", "_v", "_doc", "_blob"})

RUNTIME_DDL = """
CREATE TABLE IF NOT EXISTS "_outbox" (seq INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS "_idempotency" (
  scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, response BLOB NOT NULL,
  expires_at INTEGER NOT NULL, PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS "_idempotency_expiry" ON "_idempotency" (expires_at);
CREATE TABLE IF NOT EXISTS "_processed" (
  consumer TEXT NOT NULL, event_id TEXT NOT NULL, at INTEGER NOT NULL,
  PRIMARY KEY (consumer, event_id));
CREATE INDEX IF NOT EXISTS "_processed_at" ON "_processed" (at);
CREATE TABLE IF NOT EXISTS "_timers" (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, due_at INTEGER NOT NULL, payload BLOB NOT NULL,
  version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS "_timers_due" ON "_timers" (due_at, id);
CREATE TABLE IF NOT EXISTS "_sequences" (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def q(name: str) -> str:
    """A quoted identifier (names are checked by check_schema: no quotes inside)."""
    return f'"{name}"'


def literal(value: Any) -> str:
    """A value written into SQL (partial indexes cannot hold parameters)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} cannot be written into an index")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise ValueError(f"{value!r} cannot be written into an index")


_SQL_OPS = {"$eq": "=", "$ne": "!=", "$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}


def where_sql(terms: tuple[Term, ...], literal_terms: frozenset[Term]) -> tuple[str, list[Any]]:
    """SQL for the terms, MongoDB's semantics: None matches a missing field; $ne and $nin
    match it too. Terms in `literal_terms` are written literally, as their partial
    index's WHERE is."""
    parts: list[str] = []
    params: list[Any] = []
    for term in terms:
        col, op, value = q(term.field), term.op, term.value
        if op in ("$in", "$nin"):
            values = [v for v in value if v is not None]
            has_none = len(values) != len(value)
            marks = ", ".join("?" * len(values))
            params.extend(values)
            if op == "$in":
                cond = f"{col} IN ({marks})" if values else "0"
                parts.append(f"({cond} OR {col} IS NULL)" if has_none else cond)
            else:
                cond = f"{col} NOT IN ({marks})" if values else "1"
                parts.append(f"({col} IS NOT NULL AND {cond})" if has_none
                             else f"({col} IS NULL OR {cond})")
        elif value is None:
            parts.append(f"{col} IS NULL" if op == "$eq" else f"{col} IS NOT NULL")
        elif term in literal_terms:
            parts.append(f"{col} {_SQL_OPS[op]} {literal(value)}")
        elif op == "$ne":
            parts.append(f"({col} IS NULL OR {col} != ?)")
            params.append(value)
        else:
            parts.append(f"{col} {_SQL_OPS[op]} ?")
            params.append(value)
    return " AND ".join(parts), params


def _same(stored: Any, value: Any) -> bool:
    """Whether writing `value` would store what the column holds (bools are stored as
    integers; 1, 1.0 and "1" are different values)."""
    if value is None or stored is None:
        return value is stored
    if isinstance(value, bool | int):
        return type(stored) is int and stored == int(value)
    if isinstance(value, float):
        return type(stored) is float and stored == value
    if isinstance(value, str):
        return type(stored) is str and stored == value
    return False


UNKEPT = object()  # a written row that the rows kept for get must not hold (Table.got)


class Table:
    """One collection's table: its SQL, written once at open, and its row codec."""

    def __init__(self, c: Collection) -> None:
        self.c = c
        self.name = c.name
        self.rules = DocumentRules.of(c)
        self.fields = self.rules.fields
        self.blob = c.blob
        t = q(c.name)
        data = [*self.fields, "_doc", *(["_blob"] if c.blob else [])]
        cols = ", ".join(q(f) for f in data)
        marks = ", ".join("?" * len(data))
        self.insert_sql = f'INSERT INTO {t} ("_id", "_v", {cols}) VALUES (?, 1, {marks})'
        sets = ", ".join(f"{q(f)} = ?" for f in data)
        self.replace_sql = f'UPDATE {t} SET "_v" = "_v" + 1, {sets} WHERE "_id" = ? AND "_v" = ?'
        # A replace sets only the queryable fields whose values change (see replacing).
        fields_read = "".join(f", {q(f)}" for f in self.fields)
        self.stored_fields_sql = f'SELECT "_v"{fields_read} FROM {t} WHERE "_id" = ?'
        self._replace_sql: dict[tuple[int, ...], str] = {}
        excluded = ", ".join(f"{q(f)} = excluded.{q(f)}" for f in data)
        self.put_sql = (
            f'{self.insert_sql} ON CONFLICT ("_id") DO UPDATE SET "_v" = "_v" + 1, {excluded}'
            ' RETURNING "_v"'
        )
        self.delete_sql = f'DELETE FROM {t} WHERE "_id" = ?'
        self.delete_guarded_sql = f'DELETE FROM {t} WHERE "_id" = ? AND "_v" = ?'
        blob_col = ', "_blob"' if c.blob else ""
        self.columns = f'"_id", "_v", "_doc"{blob_col}'
        self.get_sql = f'SELECT "_v", "_doc"{blob_col} FROM {t} WHERE "_id" = ?'
        self.indexes = {_index_name(c.name, i): i for i in c.indexes}
        self.partial_terms = frozenset(
            term for i in c.indexes if i.partial for term in parse_where(c, i.partial)
        )
        # Fields whose equality may be written into a find's SQL as a literal.
        self.literal_fields = frozenset(term.field for term in self.partial_terms)
        # Equality on one of these seeks an index (see SqliteDocumentStore.find).
        self.seek: list[tuple[str, frozenset[Term]]] = [("_id", frozenset())] + [
            (i.fields[0].lstrip("-"),
             frozenset(parse_where(c, i.partial)) if i.partial else frozenset())
            for i in c.indexes
        ]

    def row(self, doc: Doc) -> list[Any]:
        """The data columns of `doc` (its queryable fields, `_doc`, `_blob`)."""
        self.rules.check(doc)
        values = [doc.get(f) for f in self.fields]
        blob = self.blob
        if blob is None:
            values.append(_dumps(doc))
        else:
            values.append(_dumps({k: v for k, v in doc.items() if k != blob}))
            values.append(doc.get(blob))
        return values

    def replacing(
        self, raw: sqlite3.Connection, key: Any, version: int, row: list[Any]
    ) -> tuple[str, list[Any]] | None:
        """The UPDATE for a replace guarded by `version`, with its parameters; None
        when the stored document is not at that version (or is gone). It sets only the
        queryable fields whose stored values differ: SQLite rewrites the entry of
        every index on a column an UPDATE sets, changed or not, and in a big table
        each of those is another page written to the WAL at commit (routing among
        25,000 groups, whose table has six indexes: see the README's Performance)."""
        n = len(self.fields)
        if not n:
            return self.replace_sql, [*row, key, version]
        stored = raw.execute(self.stored_fields_sql, (key,)).fetchone()
        if stored is None or stored[0] != version:
            return None
        changed = tuple(i for i in range(n) if not _same(stored[i + 1], row[i]))
        sql = self._replace_sql.get(changed)
        if sql is None:
            data = [*(self.fields[i] for i in changed), "_doc", *(["_blob"] if self.blob else [])]
            sets = ", ".join(f"{q(f)} = ?" for f in data)
            sql = self._replace_sql[changed] = (
                f'UPDATE {q(self.name)} SET "_v" = "_v" + 1, {sets}'
                ' WHERE "_id" = ? AND "_v" = ?'
            )
        return sql, [*(row[i] for i in changed), *row[n:], key, version]

    def got(self, version: int, row: list[Any]) -> Any:
        """What get's query reads back for a document just written as `row` at
        `version`; UNKEPT when a blob SQLite would return in another type (it gives
        bytes for bytes only)."""
        n = len(self.fields)
        if self.blob is None:
            return (version, row[n])
        blob = row[n + 1]
        if blob is not None and type(blob) is not bytes:
            return UNKEPT
        return (version, row[n], blob)

    def load(self, row: Any) -> Doc:
        """A document from (_id, _v, _doc[, _blob])."""
        doc: Doc = orjson.loads(row[2])
        doc["_v"] = row[1]
        if self.blob is not None and row[3] is not None:
            doc[self.blob] = row[3]
        return doc

    def duplicate(
        self, raw: sqlite3.Connection, key: Any, exc: sqlite3.IntegrityError, *, inserting: bool
    ) -> Exception:
        """DuplicateKey naming the index from SQLite's "UNIQUE constraint failed: t.a, t.b";
        an insert whose `_id` is taken names `_id`, whatever else it hits (as on MongoDB)."""
        message = str(exc)
        if "UNIQUE constraint failed" not in message:
            return exc
        columns = tuple(
            part.strip().rsplit(".", 1)[-1] for part in message.split(":", 1)[1].split(",")
        )
        if columns == ("_id",) or (inserting and raw.execute(self.get_sql, (key,)).fetchone()):
            return DuplicateKey(self.name, key)
        return DuplicateKey(self.name, key, index_fields(self.c, columns))


def _dumps(doc: Doc) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise ValueError(f"not a JSON-like document: {exc}") from exc


def _index_name(collection: str, index: Any) -> str:
    definition = orjson.dumps(
        [list(index.fields), index.unique, index.partial], option=orjson.OPT_SORT_KEYS
    )
    return f"ix_{collection}_{hashlib.sha1(definition).hexdigest()[:12]}"


def _index_sql(name: str, table: Table, index: Any) -> str:
    cols = ", ".join(
        f"{q(f.lstrip('-'))} DESC" if f.startswith("-") else q(f) for f in index.fields
    )
    where = ""
    if index.partial:
        terms = parse_where(table.c, index.partial)
        where = " WHERE " + where_sql(terms, frozenset(terms))[0]
    unique = "UNIQUE " if index.unique else ""
    return f"CREATE {unique}INDEX IF NOT EXISTS {q(name)} ON {q(table.name)} ({cols}){where}"


def create_tables(raw: sqlite3.Connection, tables: list[Table]) -> None:
    """Creates and evolves every table and index (runs inside the writer's transaction)."""
    for statement in RUNTIME_DDL.split(";"):
        if statement.strip():
            raw.execute(statement)
    for table in tables:
        t = q(table.name)
        key = "INTEGER" if table.c.key_type is int else "TEXT"
        fields = "".join(f", {q(f)}" for f in table.fields)
        blob = ', "_blob" BLOB' if table.blob else ""
        raw.execute(
            f'CREATE TABLE IF NOT EXISTS {t} ("_id" {key} PRIMARY KEY NOT NULL,'
            f' "_v" INTEGER NOT NULL{fields}, "_doc" BLOB NOT NULL{blob})'
        )
        existing = [r[1] for r in raw.execute(f"PRAGMA table_info({t})")]
        ours = raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
            " AND name LIKE 'ix\\_%' ESCAPE '\\'",
            (table.name,),
        ).fetchall()
        for (name,) in ours:
            if name not in table.indexes:
                raw.execute(f"DROP INDEX {q(name)}")
        for col in existing:
            if col not in _RESERVED and col not in table.fields:
                raw.execute(f"ALTER TABLE {t} DROP COLUMN {q(col)}")
        for f in table.fields:
            if f not in existing:
                raw.execute(f"ALTER TABLE {t} ADD COLUMN {q(f)}")
                raw.execute(f"UPDATE {t} SET {q(f)} = json_extract(CAST(_doc AS TEXT), '$.{f}')")
        if table.blob and "_blob" not in existing:
            raw.execute(f'ALTER TABLE {t} ADD COLUMN "_blob" BLOB')
        for name, index in table.indexes.items():
            try:
                raw.execute(_index_sql(name, table, index))
            except sqlite3.IntegrityError as exc:
                raise ValueError(
                    f"{table.name}: cannot create the unique index on {index.fields}:"
                    f" stored documents repeat its values ({exc})"
                ) from exc
