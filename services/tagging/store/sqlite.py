"""The tagging store on SQLite (aiosqlite, WAL): the embedded default. Writes go
through one connection under a lock; scans and reads use a second connection."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite

from services.runtime.storage import SqliteWriter, open_sqlite
from services.tagging.domain.history import ROW_COLUMNS
from services.tagging.store import AlreadyExists, ManualTag, TaggingStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS member_index (
  idx INTEGER PRIMARY KEY, member_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS history (
  idx INTEGER PRIMARY KEY, registered_day INTEGER, tier INTEGER, points_balance INTEGER,
  orders_total INTEGER, spend_total INTEGER, first_order_day INTEGER, last_order_day INTEGER,
  ord_day BLOB, ord_fen BLOB, ord_cnt BLOB, cat BLOB, act_day BLOB);
CREATE TABLE IF NOT EXISTS processed_events (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS manual_tags (
  idx INTEGER NOT NULL, tag TEXT NOT NULL, by TEXT NOT NULL, at INTEGER NOT NULL,
  PRIMARY KEY (idx, tag));
CREATE TABLE IF NOT EXISTS definitions (
  kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS versions (
  kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
  bitmap BLOB NOT NULL, PRIMARY KEY (kind, key, version));
CREATE TABLE IF NOT EXISTS bitmaps (
  kind TEXT NOT NULL, name TEXT NOT NULL, bitmap BLOB NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS run_lock (
  id INTEGER PRIMARY KEY CHECK (id = 1), run_id TEXT NOT NULL, heartbeat INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run_stats (
  run_id TEXT NOT NULL, partition INTEGER NOT NULL, blob BLOB NOT NULL,
  PRIMARY KEY (run_id, partition));
CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS cycles (category TEXT PRIMARY KEY, days REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL);
"""

_ROW_SQL = ", ".join(ROW_COLUMNS)
_ROW_MARKS = ", ".join("?" * len(ROW_COLUMNS))


class SqliteTaggingStore(TaggingStore):
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._r = reader
        self._writer = SqliteWriter(writer)

    @classmethod
    async def open(cls, path: str) -> SqliteTaggingStore:
        writer = await open_sqlite(path)
        await writer.executescript(SCHEMA)
        return cls(writer, await open_sqlite(path))

    async def close(self) -> None:
        await self._r.close()
        await self._writer.close()

    async def _write(self, statements: list[tuple[str, Any]]) -> None:
        """Run (sql, params-or-list-of-params) pairs in one IMMEDIATE transaction."""

        def work(raw: sqlite3.Connection) -> None:
            for sql, params in statements:
                if isinstance(params, list):
                    raw.executemany(sql, params)
                else:
                    raw.execute(sql, params)

        await self._writer.transaction(work)

    async def _all(self, sql: str, args: tuple = ()) -> list:
        return list(await self._r.execute_fetchall(sql, args))  # one thread hop

    # -- index --
    async def index_members(self, member_ids: list[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(member_ids))

        def work(raw: sqlite3.Connection) -> dict[str, int]:
            raw.executemany(
                "INSERT OR IGNORE INTO member_index (idx, member_id) VALUES"
                " ((SELECT COALESCE(MAX(idx), -1) + 1 FROM member_index), ?)",
                [(m,) for m in wanted],
            )
            found: dict[str, int] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    raw.execute(
                        f"SELECT member_id, idx FROM member_index WHERE member_id IN ({marks})",
                        chunk,
                    ).fetchall()
                )
            return found

        return await self._writer.transaction(work)

    async def load_index(self) -> list[tuple[int, str]]:
        return [
            (r[0], r[1])
            for r in await self._all("SELECT idx, member_id FROM member_index ORDER BY idx")
        ]

    # -- history --
    async def get_history(self, idx: int) -> tuple | None:
        rows = await self._all(f"SELECT {_ROW_SQL} FROM history WHERE idx = ?", (idx,))
        return tuple(rows[0]) if rows else None

    async def apply_event(self, event_id: str, row: tuple | None, events: list[bytes]) -> bool:
        statements: list = [("INSERT INTO processed_events (event_id) VALUES (?)", (event_id,))]
        if row is not None:
            statements.append(
                (f"INSERT OR REPLACE INTO history ({_ROW_SQL}) VALUES ({_ROW_MARKS})", row)
            )
        if events:
            statements.append(("INSERT INTO outbox (event) VALUES (?)", [(e,) for e in events]))
        try:
            await self._write(statements)
        except sqlite3.IntegrityError:
            return False
        return True

    async def put_histories(self, rows: list[tuple]) -> None:
        await self._write(
            [(f"INSERT OR REPLACE INTO history ({_ROW_SQL}) VALUES ({_ROW_MARKS})", list(rows))]
        )

    async def scan_histories(
        self, partition: int = 0, partitions: int = 1, batch: int = 50_000
    ) -> AsyncIterator[list[tuple]]:
        after = -1
        while True:
            rows = await self._all(
                f"SELECT {_ROW_SQL} FROM history WHERE idx > ? AND idx % ? = ?"
                " ORDER BY idx LIMIT ?",
                (after, partitions, partition, batch),
            )
            if not rows:
                return
            yield [tuple(r) for r in rows]
            after = rows[-1][0]

    # -- manual tags --
    async def set_manual_tags(
        self, add: list[ManualTag], remove: list[tuple[int, str]], events: Sequence[bytes] = ()
    ) -> int:
        def work(raw: sqlite3.Connection) -> int:
            # executemany's rowcount is the rows actually inserted or deleted.
            added = raw.executemany(
                "INSERT OR IGNORE INTO manual_tags (idx, tag, by, at) VALUES (?,?,?,?)",
                [(t.idx, t.tag, t.by, t.at) for t in add],
            ).rowcount
            removed = raw.executemany(
                "DELETE FROM manual_tags WHERE idx=? AND tag=?", list(remove)
            ).rowcount
            if events:
                raw.executemany("INSERT INTO outbox (event) VALUES (?)", [(e,) for e in events])
            return max(added, 0) + max(removed, 0)

        return await self._writer.transaction(work)

    async def load_manual_tags(self) -> list[ManualTag]:
        return [
            ManualTag(*r)
            for r in await self._all("SELECT idx, tag, by, at FROM manual_tags ORDER BY idx, tag")
        ]

    # -- definitions and versions --
    async def put_definition(self, kind: str, key: str, doc: dict, *, create: bool = False) -> None:
        verb = "INSERT" if create else "INSERT OR REPLACE"
        try:
            await self._write(
                [
                    (
                        f"{verb} INTO definitions (kind, key, doc) VALUES (?,?,?)",
                        (kind, key, json.dumps(doc, ensure_ascii=False)),
                    )
                ]
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(key) from exc

    async def get_definition(self, kind: str, key: str) -> dict | None:
        rows = await self._all("SELECT doc FROM definitions WHERE kind=? AND key=?", (kind, key))
        return json.loads(rows[0][0]) if rows else None

    async def list_definitions(self, kind: str) -> list[dict]:
        return [
            json.loads(r[0])
            for r in await self._all(
                "SELECT doc FROM definitions WHERE kind=? ORDER BY key", (kind,)
            )
        ]

    async def add_version(
        self, kind: str, key: str, version: int, doc: dict, bitmap: bytes = b""
    ) -> None:
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO versions (kind, key, version, doc, bitmap)"
                    " VALUES (?,?,?,?,?)",
                    (kind, key, version, json.dumps(doc, ensure_ascii=False), bitmap),
                )
            ]
        )

    async def list_versions(self, kind: str, key: str) -> list[tuple[dict, bytes]]:
        return [
            (json.loads(r[0]), bytes(r[1]))
            for r in await self._all(
                "SELECT doc, bitmap FROM versions WHERE kind=? AND key=? ORDER BY version DESC",
                (kind, key),
            )
        ]

    # -- bitmaps --
    async def put_bitmaps(
        self,
        kind: str,
        bitmaps: dict[str, bytes],
        events: Sequence[bytes] = (),
        *,
        delete: Sequence[str] = (),
    ) -> None:
        statements: list = [
            (
                "INSERT OR REPLACE INTO bitmaps (kind, name, bitmap) VALUES (?,?,?)",
                [(kind, name, blob) for name, blob in bitmaps.items()],
            )
        ]
        if delete:
            statements.append(
                ("DELETE FROM bitmaps WHERE kind=? AND name=?", [(kind, n) for n in delete])
            )
        if events:
            statements.append(("INSERT INTO outbox (event) VALUES (?)", [(e,) for e in events]))
        await self._write(statements)

    async def load_bitmaps(self, kind: str) -> dict[str, bytes]:
        return {
            r[0]: bytes(r[1])
            for r in await self._all("SELECT name, bitmap FROM bitmaps WHERE kind=?", (kind,))
        }

    # -- runs --
    async def acquire_run_lock(self, run_id: str, now: int, stale_after: int) -> str:
        def work(raw: sqlite3.Connection) -> str:
            held = raw.execute("SELECT run_id, heartbeat FROM run_lock").fetchone()
            if held is None or held[0] == run_id or held[1] < now - stale_after:
                raw.execute(
                    "INSERT OR REPLACE INTO run_lock (id, run_id, heartbeat) VALUES (1,?,?)",
                    (run_id, now),
                )
                return run_id
            return held[0]

        return await self._writer.transaction(work)

    async def refresh_run_lock(self, run_id: str, now: int) -> None:
        await self._write([("UPDATE run_lock SET heartbeat=? WHERE run_id=?", (now, run_id))])

    async def release_run_lock(self, run_id: str) -> None:
        await self._write([("DELETE FROM run_lock WHERE run_id=?", (run_id,))])

    async def put_run(self, run_id: str, doc: dict, *, expect: dict | None = None) -> bool:
        if not expect:
            await self._write(
                [
                    (
                        "INSERT OR REPLACE INTO runs (run_id, doc) VALUES (?,?)",
                        (run_id, json.dumps(doc)),
                    )
                ]
            )
            return True
        fields = list(expect)
        where = " AND ".join("json_extract(doc, ?) = ?" for _ in fields)
        args: list = [json.dumps(doc), run_id]
        for f in fields:
            args += [f"$.{f}", expect[f]]

        def work(raw: sqlite3.Connection) -> bool:
            cur = raw.execute(f"UPDATE runs SET doc=? WHERE run_id=? AND {where}", args)
            return cur.rowcount == 1

        return await self._writer.transaction(work)

    async def get_run(self, run_id: str) -> dict | None:
        rows = await self._all("SELECT doc FROM runs WHERE run_id=?", (run_id,))
        return json.loads(rows[0][0]) if rows else None

    async def list_runs(self, before_id: str, limit: int) -> list[dict]:
        return [
            json.loads(r[0])
            for r in await self._all(
                "SELECT doc FROM runs WHERE (?='' OR run_id < ?) ORDER BY run_id DESC LIMIT ?",
                (before_id, before_id, limit),
            )
        ]

    async def put_run_stats(self, run_id: str, partition: int, blob: bytes) -> None:
        await self._write(
            [
                (
                    "INSERT OR REPLACE INTO run_stats (run_id, partition, blob) VALUES (?,?,?)",
                    (run_id, partition, blob),
                )
            ]
        )

    async def load_run_stats(self, run_id: str) -> dict[int, bytes]:
        return {
            r[0]: bytes(r[1])
            for r in await self._all(
                "SELECT partition, blob FROM run_stats WHERE run_id=?", (run_id,)
            )
        }

    async def clear_run_stats(self) -> None:
        await self._write([("DELETE FROM run_stats", ())])

    # -- categories --
    async def category_ids(self, names: list[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(names))
        if wanted:
            await self._write(
                [
                    (
                        "INSERT OR IGNORE INTO categories (id, name) VALUES"
                        " ((SELECT COALESCE(MAX(id), -1) + 1 FROM categories), ?)",
                        [(n,) for n in wanted],
                    )
                ]
            )
        known = await self.load_categories()
        return {n: known[n] for n in wanted}

    async def load_categories(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self._all("SELECT name, id FROM categories")}

    async def set_cycle(self, category: str, days: float) -> None:
        if days > 0:
            await self._write(
                [("INSERT OR REPLACE INTO cycles (category, days) VALUES (?,?)", (category, days))]
            )
        else:
            await self._write([("DELETE FROM cycles WHERE category=?", (category,))])

    async def load_cycles(self) -> dict[str, float]:
        return {r[0]: r[1] for r in await self._all("SELECT category, days FROM cycles")}

    # -- outbox --
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        return [
            (r[0], bytes(r[1]))
            for r in await self._all("SELECT seq, event FROM outbox ORDER BY seq LIMIT ?", (limit,))
        ]

    async def outbox_mark_published(self, seqs: list[int]) -> None:
        await self._write([("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])])
