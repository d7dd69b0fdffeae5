"""The document store on SQLite: the embedded default (one file per service, WAL).
documents_sqlite_tables.py lays the schema out in tables and evolves it at open;
documents_sqlite_plans.py plans finds; documents_sqlite_kept.py keeps rows for get.

Three connections:
  - the writer (services.runtime.storage.SqliteWriter): every commit, next_ids and
    maintenance in its own IMMEDIATE transaction, transactions that queue up meanwhile
    written together in one hop to its thread (group commit);
  - a point reader (plain sqlite3, used on the event loop): get, small get_many,
    recall, is_processed, and a find that seeks an index by equality (on `_id` or on an
    index's first field, with the partial filter's conditions if the index has one)
    with a limit of at most 1000: each is an index lookup of microseconds, cheaper than
    a hop to a thread. Give a hot-path find a limit for that;
  - an aiosqlite reader for everything else (other finds, count, scan, the outbox,
    due timers), so a long read never stalls the event loop.
WAL lets readers run beside the writer; each read sees every committed transaction.
The file is created owner-only (0600, storage.create_private_file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import orjson

from services.runtime.documents import (
    IDEMPOTENCY,
    PROCESSED,
    TIMERS,
    Conflict,
    Doc,
    DocumentStore,
    DuplicateKey,
    IdempotencyRecord,
    Key,
    Order,
    Schema,
    Timer,
    UnitOfWork,
    timer_version,
)
from services.runtime.documents_query import (
    check_schema,
    guard_version,
    parse_where,
)
from services.runtime.documents_sqlite_kept import KeptRows
from services.runtime.documents_sqlite_plans import FindPlans
from services.runtime.documents_sqlite_tables import (
    Table,
    create_tables,
    q,
    where_sql,
)
from services.runtime.storage import (
    SqliteWriter,
    WalIndexHeader,
    open_point_reader,
    open_sqlite,
)

_POINT_KEYS = 64  # the most keys a get_many looks up on the event loop
_CHUNK = 500  # parameters per statement (SQLite allows 32766; fine either way)

_TIMER_SET = (
    'INSERT INTO "_timers" (id, kind, due_at, payload, version) VALUES (?, ?, ?, ?, ?)'
    " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, due_at = excluded.due_at,"
    " payload = excluded.payload, version = excluded.version"
)
_SEQUENCE_NEXT = (
    'INSERT INTO "_sequences" (name, n) VALUES (?, ?)'
    " ON CONFLICT (name) DO UPDATE SET n = n + excluded.n RETURNING n"
)


class SqliteDocumentStore(DocumentStore):
    engine: Literal["sqlite", "mongodb"] = "sqlite"

    def __init__(
        self,
        schema: Schema,
        tables: dict[str, Table],
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        point: sqlite3.Connection,
        wal: WalIndexHeader | None = None,
    ) -> None:
        self.schema = schema
        self._tables = tables
        # Rows get has read, kept while nothing but this store's own writes (which
        # update them) has been committed since (documents_sqlite_kept).
        self._kept = KeptRows(wal) if wal is not None else None
        self._writer = SqliteWriter(writer, wal, self._kept.after_batch if self._kept else None)
        self._r = reader
        self._point = point
        self._sequences = frozenset(schema.sequences)
        self._plans = FindPlans()

    @classmethod
    async def open(cls, schema: Schema, path: str | Path) -> SqliteDocumentStore:
        if not path or str(path) == ":memory:":
            raise ValueError("the SQLite document store needs a file (readers open it too)")
        check_schema(schema)
        tables = {c.name: Table(c) for c in schema.collections}
        writer = await open_sqlite(path)
        reader = point = None
        try:
            writer.row_factory = None
            await SqliteWriter(writer).transaction(
                partial(create_tables, tables=list(tables.values()))
            )
            reader = await open_sqlite(path)
            reader.row_factory = None
            point = open_point_reader(path)
            wal = WalIndexHeader.open(path)
        except BaseException:
            if reader is not None:
                await reader.close()
            await writer.close()
            raise
        store = cls(schema, tables, writer, reader, point, wal)
        filtered = [t for t in tables.values() if t.c.key_filter]
        if filtered and store._kept is not None:
            store._kept.build_filters(point, filtered)
        return store

    async def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        self._point.close()
        await self._r.close()
        await self._writer.close()

    # -- reads --
    async def get(self, collection: str, key: Key) -> Doc | None:
        t = self._tables[collection]
        kept = self._kept
        row = (
            kept.row(self._point, t, key, self._writer)
            if kept is not None
            else self._point.execute(t.get_sql, (key,)).fetchone()
        )
        if row is None:
            return None
        doc: Doc = orjson.loads(row[1])
        doc["_v"] = row[0]
        if t.blob is not None and row[2] is not None:
            doc[t.blob] = row[2]
        return doc

    async def may_exist(self, collection: str, key: Key) -> bool:
        kept = self._kept
        return kept is None or kept.may_exist(self._tables[collection], key, self._writer)

    async def get_many(self, collection: str, keys: Sequence[Key]) -> list[Doc]:
        t = self._tables[collection]
        unique = list(dict.fromkeys(keys))
        found: dict[Any, Doc] = {}
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            sql = f'SELECT {t.columns} FROM {q(t.name)} WHERE "_id" IN ({marks})'
            rows = await self._read(sql, chunk, on_loop=len(unique) <= _POINT_KEYS)
            for row in rows:
                found[row[0]] = t.load(row)
        return [found[k] for k in unique if k in found]

    async def find(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order: Order = ("_id",),
        limit: int | None = None,
    ) -> list[Doc]:
        t = self._tables[collection]
        plan, params = self._plans.plan(t, where, order, limit)
        if plan.sql is None:
            return []
        if plan.on_loop:
            rows = self._point.execute(plan.sql, params).fetchall()
        else:
            rows = list(await self._r.execute_fetchall(plan.sql, params))
        return [t.load(row) for row in rows]

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        t = self._tables[collection]
        cond, params = where_sql(parse_where(t.c, where), t.partial_terms)
        sql = f"SELECT count(*) FROM {q(t.name)}" + (f" WHERE {cond}" if cond else "")
        rows = await self._read(sql, params, on_loop=False)
        return int(rows[0][0])

    async def scan(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        batch: int = 1000,
        partition: tuple[int, int] | None = None,
        fields: Sequence[str] | None = None,
    ) -> AsyncIterator[list[Doc]]:
        t = self._tables[collection]
        cond, params = where_sql(parse_where(t.c, where), t.partial_terms)
        conds = [cond] if cond else []
        if batch < 1:
            raise ValueError("batch is at least 1")
        if partition is not None:
            index, parts = partition
            if t.c.key_type is not int or not 0 <= index < parts:
                raise ValueError(f"{t.name}: partition (i, n) with 0 <= i < n, on int keys")
            conds.append(f'"_id" % {int(parts)} = {int(index)}')
        project = None
        if fields is None:
            columns = t.columns
        elif set(fields) <= set(t.fields):
            columns = ", ".join(['"_id"', *(q(f) for f in fields)])
        else:
            columns, project = t.columns, ["_id", *fields]
        first = f"SELECT {columns} FROM {q(t.name)}"
        if conds:
            first += " WHERE " + " AND ".join(conds)
        first += f' ORDER BY "_id" LIMIT {int(batch)}'
        after = (  # keyset paging: the next batch starts after the last key
            f"SELECT {columns} FROM {q(t.name)} WHERE "
            + " AND ".join([*conds, '"_id" > ?'])
            + f' ORDER BY "_id" LIMIT {int(batch)}'
        )
        sql, args = first, params
        while True:
            rows = list(await self._r.execute_fetchall(sql, args))
            if not rows:
                return
            if fields is None:
                docs = [t.load(row) for row in rows]
            elif project is None:
                docs = [dict(zip(["_id", *fields], row, strict=True)) for row in rows]
            else:
                docs = [{f: d[f] for f in project if f in d} for d in map(t.load, rows)]
            yield docs
            if len(rows) < batch:
                return
            sql, args = after, [*params, rows[-1][0]]

    async def _read(self, sql: str, params: Sequence[Any], *, on_loop: bool) -> list[Any]:
        if on_loop:
            return self._point.execute(sql, params).fetchall()
        return list(await self._r.execute_fetchall(sql, params))

    async def next_ids(self, sequence: str, count: int = 1) -> list[int]:
        if sequence not in self._sequences:
            raise ValueError(f"{self.schema.service} declares no sequence {sequence!r}")
        if count < 0:
            raise ValueError("count is at least 0")
        if count == 0:
            return []
        top = await self._writer.transaction(
            lambda raw: raw.execute(_SEQUENCE_NEXT, (sequence, count)).fetchone()[0]
        )
        return list(range(top - count + 1, top + 1))

    # -- writes --
    async def commit(self, uow: UnitOfWork) -> None:
        if not uow:
            return
        written: list[tuple[tuple[str, Key], Any]] = []
        versions = await self._writer.transaction(
            partial(self._apply, uow=uow, written=written), written
        )
        for (op, _, arg), version in zip(uow.ops, versions, strict=True):
            if op == "put_many":
                for doc, v in zip(arg, version, strict=True):
                    doc["_v"] = v
            elif version is not None:
                arg["_v"] = version

    def _apply(
        self, raw: sqlite3.Connection, uow: UnitOfWork, written: list[Any]
    ) -> list[Any]:
        """The whole unit of work, on the writer's thread, in its transaction; returns
        each op's new version(s). `written` gets each document's row as get reads it
        (None when deleted), for the rows kept for get (see documents_sqlite_kept)."""
        written.clear()  # a batch that failed runs again, each work in a savepoint
        versions: list[Any] = []
        for op, collection, arg in uow.ops:
            t = self._tables[collection]
            if op == "put_many":
                versions.append([self._put(raw, t, doc, written) for doc in arg])
            elif op == "put":
                versions.append(self._put(raw, t, arg, written))
            elif op == "insert":
                row = t.row(arg)
                try:
                    raw.execute(t.insert_sql, (arg["_id"], *row))
                except sqlite3.IntegrityError as exc:
                    raise t.duplicate(raw, arg["_id"], exc, inserting=True) from exc
                versions.append(1)
                written.append(((collection, arg["_id"]), t.got(1, row)))
            elif op == "replace":
                row = t.row(arg)
                version = guard_version(collection, arg)
                update = t.replacing(raw, arg["_id"], version, row)
                if update is None:
                    raise Conflict(collection, arg["_id"])
                try:
                    cur = raw.execute(*update)
                except sqlite3.IntegrityError as exc:
                    raise t.duplicate(raw, arg["_id"], exc, inserting=False) from exc
                if cur.rowcount != 1:
                    raise Conflict(collection, arg["_id"])
                versions.append(version + 1)
                written.append(((collection, arg["_id"]), t.got(version + 1, row)))
            elif op == "delete":
                key, version = arg
                if version is None:
                    raw.execute(t.delete_sql, (key,))
                elif raw.execute(t.delete_guarded_sql, (key, version)).rowcount != 1:
                    raise Conflict(collection, key)
                versions.append(None)
                written.append(((collection, key), None))
            else:
                raise ValueError(f"unknown operation {op!r}")
        self._apply_records(raw, uow)
        return versions

    @staticmethod
    def _put(raw: sqlite3.Connection, t: Table, doc: Doc, written: list[Any]) -> int:
        row = t.row(doc)
        try:
            version = int(raw.execute(t.put_sql, (doc["_id"], *row)).fetchone()[0])
        except sqlite3.IntegrityError as exc:
            raise t.duplicate(raw, doc["_id"], exc, inserting=False) from exc
        written.append(((t.name, doc["_id"]), t.got(version, row)))
        return version

    @staticmethod
    def _apply_records(raw: sqlite3.Connection, uow: UnitOfWork) -> None:
        for timer in uow.fired:
            cur = raw.execute(
                'DELETE FROM "_timers" WHERE id = ? AND version = ?', (timer.id, timer.version)
            )
            if cur.rowcount != 1:
                raise Conflict(TIMERS, timer.id)
        for timer_id in uow.cancelled:
            raw.execute('DELETE FROM "_timers" WHERE id = ?', (timer_id,))
        for timer in uow.timers:
            payload = orjson.dumps(dict(timer.payload))
            raw.execute(
                _TIMER_SET, (timer.id, timer.kind, timer.due_at, payload, timer_version())
            )
        if (rec := uow.idempotency) is not None:
            try:
                raw.execute(
                    'INSERT INTO "_idempotency" (scope, key, fingerprint, response, expires_at)'
                    " VALUES (?, ?, ?, ?, ?)",
                    (rec.scope, rec.key, rec.fingerprint, rec.response, rec.expires_at),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKey(IDEMPOTENCY, rec.key, ("scope", "key")) from exc
        for consumer, event_id, at in uow.processed:
            try:
                raw.execute(
                    'INSERT INTO "_processed" (consumer, event_id, at) VALUES (?, ?, ?)',
                    (consumer, event_id, at),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKey(PROCESSED, event_id, ("consumer", "event_id")) from exc
        for start in range(0, len(uow.events), _CHUNK):
            # One statement per chunk, not executemany's step per event (each step
            # lets the event loop's thread take the GIL back and forth); rows are
            # numbered in the order of the VALUES.
            chunk = uow.events[start : start + _CHUNK]
            raw.execute(
                'INSERT INTO "_outbox" (event) VALUES ' + ", ".join(["(?)"] * len(chunk)), chunk
            )

    # -- the runtime's records --
    async def recall(self, scope: str, key: str) -> IdempotencyRecord | None:
        row = self._point.execute(
            'SELECT fingerprint, response, expires_at FROM "_idempotency"'
            " WHERE scope = ? AND key = ?",
            (scope, key),
        ).fetchone()
        return None if row is None else IdempotencyRecord(scope, key, row[0], row[1], row[2])

    async def is_processed(self, consumer: str, event_id: str) -> bool:
        return (
            self._point.execute(
                'SELECT 1 FROM "_processed" WHERE consumer = ? AND event_id = ?',
                (consumer, event_id),
            ).fetchone()
            is not None
        )

    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        # On the loop, like a point read: the relay polls this after every commit, and
        # a hop to the reader's thread and back cost more than the read (bench).
        rows = self._point.execute(
            'SELECT seq, event FROM "_outbox" ORDER BY seq LIMIT ?', (limit,)
        ).fetchall()
        return [(int(seq), bytes(event)) for seq, event in rows]

    async def outbox_mark_published(self, seqs: Sequence[int]) -> None:
        seqs = list(seqs)

        def delete(raw: sqlite3.Connection) -> None:
            for start in range(0, len(seqs), _CHUNK):
                chunk = seqs[start : start + _CHUNK]
                raw.execute(
                    f'DELETE FROM "_outbox" WHERE seq IN ({", ".join("?" * len(chunk))})', chunk
                )

        if seqs:
            await self._writer.transaction(delete)

    async def due_timers(self, now: int, limit: int) -> list[Timer]:
        rows = await self._r.execute_fetchall(
            'SELECT id, kind, due_at, payload, version FROM "_timers" WHERE due_at <= ?'
            " ORDER BY due_at, id LIMIT ?",
            (now, limit),
        )
        return [
            Timer(id=i, kind=k, due_at=d, payload=orjson.loads(p), version=v)
            for i, k, d, p, v in rows
        ]

    async def prune(self, now: int, processed_before: int) -> int:
        def delete(raw: sqlite3.Connection) -> int:
            expired = raw.execute('DELETE FROM "_idempotency" WHERE expires_at <= ?', (now,))
            marks = raw.execute('DELETE FROM "_processed" WHERE at < ?', (processed_before,))
            return expired.rowcount + marks.rowcount

        return int(await self._writer.transaction(delete))
