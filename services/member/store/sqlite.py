"""The member store on SQLite (aiosqlite, WAL): the embedded default.

Writes go through one connection under a lock, each Change in one IMMEDIATE
transaction; reads use a second connection, so they run beside a write (WAL)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import aiosqlite
import orjson

from services.member.domain.members import Member, MemberKind
from services.member.domain.orders import Order
from services.member.domain.points import Lot, PointsEntry
from services.member.domain.stored_value import StoredValueEntry
from services.member.domain.tiers import TierChange, TierProgram
from services.member.store import (
    Change,
    DuplicateKey,
    IdentityTaken,
    MemberFilter,
    MemberStore,
    StoreConflict,
    codec,
    expected_order_refunds,
)
from services.runtime.idempotency import IdempotencyRecord
from services.runtime.storage import SqliteWriter, open_point_reader, open_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
  id TEXT PRIMARY KEY, store_id TEXT NOT NULL, guide_id TEXT NOT NULL,
  tier_level INTEGER NOT NULL, kind INTEGER NOT NULL, channel INTEGER NOT NULL,
  paid_until INTEGER, version INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS members_store ON members (store_id, id);
CREATE INDEX IF NOT EXISTS members_guide ON members (guide_id, id);
CREATE INDEX IF NOT EXISTS members_paid ON members (kind, paid_until);
CREATE TABLE IF NOT EXISTS identities (lookup TEXT PRIMARY KEY, member_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lots (
  id TEXT PRIMARY KEY, member_id TEXT NOT NULL, expires_at INTEGER NOT NULL,
  remaining INTEGER NOT NULL, announced INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lots_open ON lots (member_id) WHERE remaining > 0;
CREATE INDEX IF NOT EXISTS lots_expiry ON lots (expires_at) WHERE remaining > 0;
CREATE TABLE IF NOT EXISTS points_entries (
  id TEXT PRIMARY KEY, member_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS points_entries_member ON points_entries (member_id, id);
CREATE TABLE IF NOT EXISTS sv_entries (
  id TEXT PRIMARY KEY, member_id TEXT NOT NULL, payment_entry_id TEXT NOT NULL,
  delta_fen INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sv_entries_member ON sv_entries (member_id, id);
CREATE INDEX IF NOT EXISTS sv_entries_payment ON sv_entries (payment_entry_id);
CREATE TABLE IF NOT EXISTS orders (
  id TEXT PRIMARY KEY, member_id TEXT NOT NULL, paid_at INTEGER NOT NULL,
  net_growth INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS orders_member ON orders (member_id, paid_at, id);
CREATE TABLE IF NOT EXISTS tier_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, member_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tier_changes_member ON tier_changes (member_id, seq);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
  scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, response BLOB NOT NULL,
  PRIMARY KEY (scope, key));
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL);
"""


def _dump(doc: dict) -> str:
    # orjson: documents are encoded and decoded on every write and read of the hot path.
    return orjson.dumps(doc).decode()


class SqliteMemberStore(MemberStore):
    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        point_reader: sqlite3.Connection,
    ) -> None:
        self._r = reader
        self._point = point_reader
        self._writer = SqliteWriter(writer)

    @classmethod
    async def open(cls, path: str) -> SqliteMemberStore:
        writer = await open_sqlite(path)
        await writer.executescript(SCHEMA)
        reader = await open_sqlite(path)
        return cls(writer, reader, open_point_reader(path))

    async def close(self) -> None:
        self._point.close()
        await self._r.close()
        await self._writer.close()

    # -- writes --
    async def commit(self, change: Change) -> None:
        await self._writer.transaction(lambda raw: self._apply(raw, change))
        if change.member is not None:
            change.member.version = (change.expected_version or 0) + 1

    def _apply(self, w: sqlite3.Connection, change: Change) -> None:
        """The whole change, synchronously on the writer's thread."""
        m = change.member
        if m is not None:
            doc = codec.member_to_doc(m)
            doc["version"] = version = (change.expected_version or 0) + 1
            row = (
                m.store_id,
                m.guide_id,
                m.tier_level,
                m.kind.value,
                m.channel,
                codec.ts(m.paid_until),
                version,
                _dump(doc),
            )
            if change.expected_version is None:
                try:
                    w.execute(
                        "INSERT INTO members (store_id, guide_id, tier_level, kind, channel,"
                        " paid_until, version, doc, id) VALUES (?,?,?,?,?,?,?,?,?)",
                        (*row, m.id),
                    )
                except sqlite3.IntegrityError as exc:
                    raise StoreConflict(m.id) from exc
            else:
                cur = w.execute(
                    "UPDATE members SET store_id=?, guide_id=?, tier_level=?, kind=?, channel=?,"
                    " paid_until=?, version=?, doc=? WHERE id=? AND version=?",
                    (*row, m.id, change.expected_version),
                )
                if cur.rowcount != 1:
                    raise StoreConflict(m.id)
        for lookup, member_id in change.new_identities:
            try:
                w.execute(
                    "INSERT INTO identities (lookup, member_id) VALUES (?, ?)", (lookup, member_id)
                )
            except sqlite3.IntegrityError as exc:
                owner = w.execute(
                    "SELECT member_id FROM identities WHERE lookup=?", (lookup,)
                ).fetchone()
                raise IdentityTaken(lookup, owner[0] if owner else "") from exc
        if change.lots:
            w.executemany(
                "INSERT OR REPLACE INTO lots (id, member_id, expires_at, remaining, announced, doc)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (
                        lot.id,
                        lot.member_id,
                        codec.ts(lot.expires_at),
                        lot.remaining,
                        int(lot.announced),
                        _dump(codec.lot_to_doc(lot)),
                    )
                    for lot in change.lots
                ],
            )
        if change.points_entries:
            w.executemany(
                "INSERT INTO points_entries (id, member_id, doc) VALUES (?,?,?)",
                [
                    (e.id, e.member_id, _dump(codec.points_entry_to_doc(e)))
                    for e in change.points_entries
                ],
            )
        if change.stored_value_entries:
            w.executemany(
                "INSERT INTO sv_entries (id, member_id, payment_entry_id, delta_fen, doc)"
                " VALUES (?,?,?,?,?)",
                [
                    (
                        e.id,
                        e.member_id,
                        e.payment_entry_id,
                        e.delta_fen,
                        _dump(codec.sv_entry_to_doc(e)),
                    )
                    for e in change.stored_value_entries
                ],
            )
        if change.order is not None:
            o = change.order
            doc = codec.order_to_doc(o)
            order_row = (o.member_id, codec.ts(o.paid_at), doc["net_growth"], _dump(doc), o.id)
            if change.new_order:
                try:
                    w.execute(
                        "INSERT INTO orders (member_id, paid_at, net_growth, doc, id)"
                        " VALUES (?,?,?,?,?)",
                        order_row,
                    )
                except sqlite3.IntegrityError as exc:
                    raise DuplicateKey(o.id) from exc
            else:
                cur = w.execute(
                    "UPDATE orders SET member_id=?, paid_at=?, net_growth=?, doc=? WHERE id=?"
                    " AND json_array_length(doc, '$.refunds')=?",
                    (*order_row, expected_order_refunds(change)),
                )
                if cur.rowcount != 1:
                    raise StoreConflict(o.id)
        if change.tier_changes:
            w.executemany(
                "INSERT INTO tier_changes (member_id, doc) VALUES (?, ?)",
                [(c.member_id, _dump(codec.tier_change_to_doc(c))) for c in change.tier_changes],
            )
        if change.tier_program is not None:
            w.execute(
                "INSERT OR REPLACE INTO settings (key, doc) VALUES ('tier_program', ?)",
                (_dump(codec.program_to_doc(change.tier_program)),),
            )
        if change.idempotency is not None:
            rec = change.idempotency
            try:
                w.execute(
                    "INSERT INTO idempotency (scope, key, fingerprint, response) VALUES (?,?,?,?)",
                    (rec.scope, rec.key, rec.fingerprint, rec.response),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKey(rec.key) from exc
        if change.events:
            w.executemany(
                "INSERT INTO outbox (event) VALUES (?)", [(raw,) for raw in change.events]
            )

    # -- reads --
    async def _one(self, sql: str, args: tuple) -> aiosqlite.Row | None:
        # Point lookups by key run on the event loop: a primary-key read in WAL mode
        # takes microseconds, far less than a hop to the reader thread and back.
        return self._point.execute(sql, args).fetchone()

    async def _all(self, sql: str, args: tuple) -> list[aiosqlite.Row]:
        return list(await self._r.execute_fetchall(sql, args))

    async def get_member(self, member_id: str) -> Member | None:
        row = await self._one("SELECT doc FROM members WHERE id=?", (member_id,))
        return codec.member_from_doc(orjson.loads(row[0])) if row else None

    async def member_id_for(self, lookup: str) -> str | None:
        row = await self._one("SELECT member_id FROM identities WHERE lookup=?", (lookup,))
        return row[0] if row else None

    async def list_members(self, flt: MemberFilter, after_id: str, limit: int) -> list[Member]:
        where = ["id > ?"]
        args: list[object] = [after_id]
        for column, value, unset in (
            ("store_id", flt.store_id, ""),
            ("guide_id", flt.guide_id, ""),
            ("tier_level", flt.tier_level, -1),
            ("kind", flt.kind, 0),
            ("channel", flt.channel, 0),
        ):
            if value != unset:
                where.append(f"{column} = ?")
                args.append(value)
        if flt.min_tier_level:
            where.append("tier_level >= ?")
            args.append(flt.min_tier_level)
        rows = await self._all(
            f"SELECT doc FROM members WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            (*args, limit),
        )
        return [codec.member_from_doc(orjson.loads(r[0])) for r in rows]

    async def lapsed_paid_member_ids(self, now: datetime, limit: int) -> list[str]:
        rows = await self._all(
            "SELECT id FROM members WHERE kind=? AND paid_until <= ? LIMIT ?",
            (MemberKind.PAID.value, codec.ts(now), limit),
        )
        return [r[0] for r in rows]

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        row = await self._one(
            "SELECT fingerprint, response FROM idempotency WHERE scope=? AND key=?", (scope, key)
        )
        return IdempotencyRecord(scope, key, row[0], bytes(row[1])) if row else None

    async def open_lots(self, member_id: str) -> list[Lot]:
        rows = await self._all(
            "SELECT doc FROM lots WHERE member_id=? AND remaining > 0", (member_id,)
        )
        return [codec.lot_from_doc(orjson.loads(r[0])) for r in rows]

    async def get_points_entry(self, entry_id: str) -> PointsEntry | None:
        row = await self._one("SELECT doc FROM points_entries WHERE id=?", (entry_id,))
        return codec.points_entry_from_doc(orjson.loads(row[0])) if row else None

    async def list_points_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[PointsEntry]:
        rows = await self._all(
            "SELECT doc FROM points_entries WHERE member_id=? AND (?='' OR id < ?)"
            " ORDER BY id DESC LIMIT ?",
            (member_id, before_id, before_id, limit),
        )
        return [codec.points_entry_from_doc(orjson.loads(r[0])) for r in rows]

    async def members_with_birthday(
        self, endings: tuple[str, ...], after_id: str, limit: int
    ) -> list[Member]:
        # A daily job: a scan of the documents is fine (no birthday column to index).
        marks = ",".join("?" * len(endings))
        rows = await self._all(
            "SELECT doc FROM members WHERE id > ?"
            f" AND substr(json_extract(doc, '$.birthday'), 5) IN ({marks}) ORDER BY id LIMIT ?",
            (after_id, *endings, limit),
        )
        return [codec.member_from_doc(orjson.loads(r[0])) for r in rows]

    async def members_with_due_lots(self, now: datetime, limit: int) -> list[str]:
        rows = await self._all(
            "SELECT DISTINCT member_id FROM lots WHERE remaining > 0 AND expires_at <= ? LIMIT ?",
            (codec.ts(now), limit),
        )
        return [r[0] for r in rows]

    async def expiring_lots(
        self, member_id: str, start: datetime, end: datetime, after_id: str, limit: int
    ) -> list[Lot]:
        rows = await self._all(
            "SELECT doc FROM lots WHERE remaining > 0 AND expires_at > ? AND expires_at <= ?"
            " AND (?='' OR member_id=?) AND id > ? ORDER BY id LIMIT ?",
            (codec.ts(start), codec.ts(end), member_id, member_id, after_id, limit),
        )
        return [codec.lot_from_doc(orjson.loads(r[0])) for r in rows]

    async def unannounced_lots(self, start: datetime, end: datetime, limit: int) -> list[Lot]:
        rows = await self._all(
            "SELECT doc FROM lots WHERE remaining > 0 AND expires_at > ? AND expires_at <= ?"
            " AND announced = 0 ORDER BY id LIMIT ?",
            (codec.ts(start), codec.ts(end), limit),
        )
        return [codec.lot_from_doc(orjson.loads(r[0])) for r in rows]

    async def get_stored_value_entry(self, entry_id: str) -> StoredValueEntry | None:
        row = await self._one("SELECT doc FROM sv_entries WHERE id=?", (entry_id,))
        return codec.sv_entry_from_doc(orjson.loads(row[0])) if row else None

    async def refunded_fen_for_payment(self, payment_entry_id: str) -> int:
        row = await self._one(
            "SELECT COALESCE(SUM(delta_fen), 0) FROM sv_entries WHERE payment_entry_id=?",
            (payment_entry_id,),
        )
        assert row is not None  # an aggregate always has its row
        return int(row[0])

    async def list_stored_value_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[StoredValueEntry]:
        rows = await self._all(
            "SELECT doc FROM sv_entries WHERE member_id=? AND (?='' OR id < ?)"
            " ORDER BY id DESC LIMIT ?",
            (member_id, before_id, before_id, limit),
        )
        return [codec.sv_entry_from_doc(orjson.loads(r[0])) for r in rows]

    async def get_order(self, order_id: str) -> Order | None:
        row = await self._one("SELECT doc FROM orders WHERE id=?", (order_id,))
        return codec.order_from_doc(orjson.loads(row[0])) if row else None

    async def list_orders(self, member_id: str, before_id: str, limit: int) -> list[Order]:
        anchor = (
            await self._one(
                "SELECT paid_at FROM orders WHERE id=? AND member_id=?", (before_id, member_id)
            )
            if before_id
            else None
        )
        if anchor is None:
            rows = await self._all(
                "SELECT doc FROM orders WHERE member_id=? ORDER BY paid_at DESC, id DESC LIMIT ?",
                (member_id, limit),
            )
        else:
            rows = await self._all(
                "SELECT doc FROM orders WHERE member_id=? AND (paid_at < ? OR"
                " (paid_at = ? AND id < ?)) ORDER BY paid_at DESC, id DESC LIMIT ?",
                (member_id, anchor[0], anchor[0], before_id, limit),
            )
        return [codec.order_from_doc(orjson.loads(r[0])) for r in rows]

    async def growth_since(self, member_id: str, since: datetime) -> int:
        row = await self._one(
            "SELECT COALESCE(SUM(net_growth), 0) FROM orders WHERE member_id=? AND paid_at >= ?",
            (member_id, codec.ts(since)),
        )
        assert row is not None  # an aggregate always has its row
        return int(row[0])

    async def get_tier_program(self) -> TierProgram | None:
        row = await self._one("SELECT doc FROM settings WHERE key='tier_program'", ())
        return codec.program_from_doc(orjson.loads(row[0])) if row else None

    async def list_tier_changes(
        self, member_id: str, before_seq: int, limit: int
    ) -> list[tuple[int, TierChange]]:
        rows = await self._all(
            "SELECT seq, doc FROM tier_changes WHERE member_id=? AND (?=0 OR seq < ?)"
            " ORDER BY seq DESC LIMIT ?",
            (member_id, before_seq, before_seq, limit),
        )
        return [(r[0], codec.tier_change_from_doc(orjson.loads(r[1]))) for r in rows]

    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        # On the loop like the point reads: the relay polls this after every commit.
        rows = self._point.execute("SELECT seq, event FROM outbox ORDER BY seq LIMIT ?",
                                   (limit,)).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    async def outbox_mark_published(self, seqs: list[int]) -> None:
        await self._writer.transaction(
            lambda raw: raw.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs]),
        )
