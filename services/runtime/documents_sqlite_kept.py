"""Rows the SQLite document store's `get` has read, kept to answer it again without a
query for as long as nothing was committed to the database since, by this process
or another, other than the store's own writes, which update them.

Why: a point read on the event loop releases the GIL, and on a busy server taking it
back from grpc's threads cost several times the read itself (3.8 µs in a quiet loop,
~25-40 µs under load); a read-mostly service (GetMember) mostly doesn't read now.

Whether anything was committed is read from the wal-index header
(storage.WalIndexHeader: the fields of the -shm file's header that name the committed
content, memory-mapped, so a look is a memory read that keeps the GIL). The store's
writer calls `after_batch` on its thread right after each batch's COMMIT, under the
lock the readers share, with the header before and after the batch and whether the
batch was the only commit in between (PRAGMA data_version): then the rows it wrote
are updated and the rest stay valid under the new header; otherwise they are all
dropped.

Bounds: at most KEPT_ROWS rows and KEPT_BYTES bytes (all dropped when either is
reached); a row larger than KEPT_ROW_BYTES (a big blob) is read every time.

The key filters of collections declared with `key_filter` (KeyFilter: every key the
table held when the store opened, and every key its batches wrote since) follow the
same header: while nothing but the store's batches committed, a key a filter never
saw does not exist, and `get` (and `may_exist`) says so without a read. A commit by anyone else
turns the filters off until the store is opened again (their keys are unknown).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from services.runtime.documents import Key
from services.runtime.documents_sqlite_tables import UNKEPT, Table
from services.runtime.storage import BatchWritten, WalIndexHeader

KEPT_ROWS = 20_000
KEPT_BYTES = 32 * 1024 * 1024
KEPT_ROW_BYTES = 512 * 1024
_MASK64 = (1 << 64) - 1

Ref = tuple[str, Key]  # (table, key)


class _Writer(Protocol):
    # From handing a batch to the writer's thread until after_batch has seen it.
    in_flight: bool


class KeyFilter:
    """A Bloom filter of keys: `maybe(key)` is False only for a key never added. Ten
    bits a key for twice the keys there were at the start (at least 100,000), three
    probes: about 1% of absent keys answered "maybe" until the table doubles (then
    more of them are read, as without a filter)."""

    def __init__(self, keys: int = 0) -> None:
        self._bits = 20 * max(keys, 100_000)
        self._array = bytearray(self._bits // 8 + 1)

    def _probes(self, key: Key) -> tuple[int, int, int]:
        h = (hash(key) * 0x9E3779B97F4A7C15) & _MASK64  # spread (an int's hash is itself)
        bits = self._bits
        return h % bits, (h >> 21) % bits, (h >> 42) % bits

    def add(self, key: Key) -> None:
        array = self._array
        for bit in self._probes(key):
            array[bit >> 3] |= 1 << (bit & 7)

    def maybe(self, key: Key) -> bool:
        array = self._array
        return all(array[bit >> 3] & (1 << (bit & 7)) for bit in self._probes(key))


class KeptRows:
    def __init__(self, wal: WalIndexHeader) -> None:
        self.wal = wal
        self.rows: dict[Ref, Any] = {}
        self.under = b""  # the look the rows were read under
        self.bytes = 0
        # after_batch runs on the writer's thread: it and the event loop's readers
        # change the rows and their header under this lock.
        self._lock = threading.Lock()
        # Key filters by table, valid under `filters_under` (see the module's notes).
        self.filters: dict[str, KeyFilter] = {}
        self.filters_under = b""

    def close(self) -> None:
        self.wal.close()

    def row(self, point: sqlite3.Connection, t: Table, key: Key, writer: _Writer) -> Any:
        """The row (or None) as stored now: a kept one if nothing was committed since
        it was read, else read with `point` (and kept). The header is looked at before
        the row is read, so a row is never kept under a header older than itself. A
        commit by anyone else drops them all; while a batch of this store's is being
        written, a moved header is read past."""
        ref = (t.name, key)
        with self._lock:
            under = self.wal.look()
            if self._absent(t, key, under, writer):
                return None
            row = UNKEPT
            if under == self.under:
                row = self.rows.get(ref, UNKEPT)
            elif not writer.in_flight:
                self._drop()
                self.under = under
            # else: maybe this store's batch committed and has not updated its rows yet
            # (after_batch will, or will drop them all): read past them, keep nothing.
        if row is UNKEPT:
            row = point.execute(t.get_sql, (key,)).fetchone()
            with self._lock:
                # Kept only if no batch moved the rows on since the look above (the
                # row read may predate that batch's commit).
                if self.under == under:
                    self._keep(ref, row)
        return row

    def build_filters(self, point: sqlite3.Connection, tables: Sequence[Table]) -> None:
        """At open: a filter of every key of each table, read with `point`. If anything
        commits while they are read, there are none (every key is then read)."""
        with self._lock:
            under = self.wal.look()
        filters = {}
        for t in tables:
            count = point.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
            keys = KeyFilter(count)
            for (key,) in point.execute(f'SELECT "_id" FROM "{t.name}"'):
                keys.add(key)
            filters[t.name] = keys
        with self._lock:
            if self.wal.look() == under:
                self.filters, self.filters_under = filters, under

    def may_exist(self, t: Table, key: Key, writer: _Writer) -> bool:
        """False when the table's filter never saw `key` and nothing but this store's
        batches (each seen by after_batch) committed since the filter was made."""
        with self._lock:
            return not self._absent(t, key, self.wal.look(), writer)

    def _absent(self, t: Table, key: Key, look: bytes, writer: _Writer) -> bool:
        """(Under the lock, with the header's `look`.) Whether the table's filter
        knows `key` is not there; a commit by another process turns the filters off."""
        keys = self.filters.get(t.name)
        if keys is None:
            return False
        if look != self.filters_under:
            if not writer.in_flight:  # another process committed: keys unknown
                self.filters = {}
            return False  # (or a batch of this store's half seen: after_batch will)
        return not keys.maybe(key)

    def _keep(self, ref: Ref, row: Any) -> None:
        """Keeps `row` (under the lock), within the bounds above."""
        size = 64 if row is None else len(row[1]) + (len(row[2] or b"") if len(row) > 2 else 0)
        if size > KEPT_ROW_BYTES:
            self.rows.pop(ref, None)
            return
        if len(self.rows) >= KEPT_ROWS or self.bytes + size > KEPT_BYTES:
            self._drop()
        self.rows[ref] = row
        self.bytes += size  # a replaced row's bytes stay counted until the next drop

    def _drop(self) -> None:
        self.rows.clear()
        self.bytes = 0

    def after_batch(self, batch: BatchWritten, works: Sequence[tuple[bool, Any]]) -> None:
        """On the writer's thread right after a batch of the store's writes (or on the
        event loop when the batch failed as a whole), before any of their callers
        resumes. `works`: each work's (succeeded, rows written as (ref, row) pairs,
        UNKEPT for a row that must not be kept). If nothing but the batch moved the
        header on from the one the rows were read under, the rows it wrote are updated
        (a kept one changed, a failed work's left as they are) and the rest stay valid
        under the new header. Otherwise they are all dropped, unless they were all read
        after the batch already (the header then is the batch's `after`)."""
        with self._lock:
            try:
                self._update(batch, works)
            except BaseException:  # a bug here must not leave a stale row answering
                self._drop()
                self.under = b""
                raise

    def _update(self, batch: BatchWritten, works: Sequence[tuple[bool, Any]]) -> None:
        self._update_filters(batch, works)
        rows = self.rows
        if batch.alone and batch.before == self.under:
            for ok, written in works:
                if not ok or not written:
                    continue
                for ref, row in written:
                    if ref in rows:  # only rows someone reads: inserts don't crowd them
                        if row is UNKEPT:
                            del rows[ref]
                        else:
                            self._keep(ref, row)
            self.under = batch.after
        elif self.under != batch.after:
            self._drop()
            self.under = b""

    def _update_filters(self, batch: BatchWritten, works: Sequence[tuple[bool, Any]]) -> None:
        """The keys the batch wrote to the filtered tables (a deleted key stays in: a
        filter only ever answers "maybe" for it, which is right)."""
        filters = self.filters
        if not filters:
            return
        if not (batch.alone and batch.before == self.filters_under):
            self.filters = {}  # someone else committed around the batch: keys unknown
            return
        for ok, written in works:
            if ok and written:
                for (table, key), _row in written:
                    keys = filters.get(table)
                    if keys is not None:
                        keys.add(key)
        self.filters_under = batch.after
