"""SQLite connections and the single writer with group commit that the document
store's SQLite engine (documents_sqlite.py) is built on. MongoDB is opened by
documents_mongo.py, the one module with motor calls."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
import structlog

T = TypeVar("T")
_log = structlog.get_logger("pond.storage")
CACHE_KIB = 32 * 1024  # page cache per connection opened by open_sqlite, at most


def create_private_file(path: Path) -> None:
    """Creates `path` (and its folder) for the owner only: folder 0700, file 0600.
    SQLite gives its -wal and -shm files the database file's mode."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


async def open_sqlite(path: Path | str) -> aiosqlite.Connection:
    if str(path) != ":memory:":
        create_private_file(Path(path))
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable across process crashes (not power loss): fine for
    # the embedded default; production durability comes from MongoDB w:majority.
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA busy_timeout=5000")
    # The writer's page cache stays valid between its own transactions, so it holds
    # the indexes a busy store updates (25,000 groups' six indexes outgrow SQLite's
    # 2 MiB default: routing there ran ~8% slower). Pages are taken as used.
    await conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return conn


def open_point_reader(path: Path | str) -> sqlite3.Connection:
    """A plain read-only connection for primary-key lookups made on the event loop
    (microseconds each; scans and writes stay on aiosqlite's threads)."""
    conn = sqlite3.connect(
        f"file:{Path(path).resolve()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class WalIndexHeader:
    """Whether anything was committed to a WAL database since the last look, by any
    connection of any process, for the price of a memory read.

    The wal-index header (the first 48 bytes of the `-shm` file, which every
    connection to the database maps; https://sqlite.org/walformat.html) is rewritten
    by each commit before the commit can be seen. A look reads what in it names the
    committed content: the last valid frame (mxFrame), the database's size in pages,
    the checksum of the last frame and the WAL's salts (bytes 16 to 40). Every commit
    appends a frame (or restarts the WAL with new salts), so equal looks mean nothing
    was committed in between. The change counter and the header's own checksum are
    left out: SQLite rewrites them without any commit, e.g. when another process
    opens the file and reads (a tool, a backup, `sqlite3` in a shell), which dropped
    every row kept for get.
    A query would answer the same (PRAGMA data_version), but every query releases the
    GIL, and on a busy event loop getting it back cost more than the read itself.
    Mapped read-only; SQLite never shrinks the file while a connection of this
    process has the database open (its owner, the store, closes this first)."""

    SIZE = 48
    CONTENT = slice(16, 40)  # mxFrame, nPage, aFrameCksum[2], aSalt[2]

    def __init__(self, view: mmap.mmap) -> None:
        self._view = view

    @classmethod
    def open(cls, db_path: Path | str) -> WalIndexHeader | None:
        """None when the database has no wal-index file to map (not in WAL mode)."""
        try:
            fd = os.open(f"{db_path}-shm", os.O_RDONLY)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size < cls.SIZE:
                return None
            return cls(mmap.mmap(fd, cls.SIZE, prot=mmap.PROT_READ))
        finally:
            os.close(fd)

    def look(self) -> bytes:
        return self._view[self.CONTENT]

    def close(self) -> None:
        self._view.close()


class SqliteWriter:
    """The one writing connection of a store: runs transactions in arrival order,
    each a plain synchronous `work(raw_connection)` applied all or nothing (kept when
    it returns, rolled back when it raises).

    Transactions that arrive while others are being written are written together in
    one job on aiosqlite's thread (group commit): one thread hop and one wake-up of
    the event loop for the batch, instead of one of each per transaction with a lock
    held across the round trip, which bounded a busy store's write rate (RecordOrder
    in `python -m bench`). The batch commits once, and one that fails still rolls
    back alone (the batch's others are then run again, see _run_transactions: a
    transaction's work only writes through the connection it is given). A caller
    cancelled before its transaction starts is skipped; once started, the
    transaction runs to COMMIT or ROLLBACK anyway."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        wal: WalIndexHeader | None = None,
        on_batch: Callable[[BatchWritten, Sequence[tuple[bool, object]]], None] | None = None,
    ) -> None:
        self.conn = conn
        self._queue: list[_Queued] = []
        self._writing: asyncio.Task[None] | None = None  # the task writing the queue, if any
        # With both: each batch's BatchWritten and its works' (succeeded, note) go to
        # on_batch on the writer's thread right after the batch (so readers on the
        # event loop see its rows' new state at once; on_batch locks what it shares
        # with them), and before any of the batch's callers resumes.
        self._wal = wal if on_batch is not None else None
        self._on_batch = on_batch
        # From handing a batch to the thread until on_batch has seen it: a commit the
        # event loop notices meanwhile may be the batch's own.
        self.in_flight = False

    async def transaction(
        self, work: Callable[[sqlite3.Connection], T], note: object = None
    ) -> T:
        """`note`: whatever on_batch should be given about this work (what it writes)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((work, future, note))
        if self._writing is None:
            self._writing = loop.create_task(self._write_queued())
        return cast(T, await future)

    async def _write_queued(self) -> None:
        try:
            while self._queue:
                batch = [queued for queued in self._queue if not queued[1].cancelled()]
                self._queue = []
                if not batch:
                    continue
                # aiosqlite runs every statement through Connection._execute on its
                # thread; we hand it the whole batch instead (private API, pinned in
                # pyproject).
                works = [w for w, _, _ in batch]
                notes = [note for _, _, note in batch]
                self.in_flight = True
                try:
                    outcomes = await asyncio.shield(
                        self.conn._execute(  # type: ignore[no-untyped-call]
                            _run_batch, self.conn._conn, works, self._wal,
                            self._on_batch, notes,
                        )
                    )
                except BaseException as exc:  # the thread itself failed, or we are cancelled
                    self.in_flight = False
                    if self._on_batch is not None:  # what was written is not known
                        self._on_batch(BatchWritten(b"", b"", alone=False), ())
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else
                                                 RuntimeError("the store is closing"))
                    raise
                self.in_flight = False
                for (_, future, _), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._writing = None

    async def close(self) -> None:
        await self.conn.close()


_Queued = tuple[Callable[[sqlite3.Connection], object], "asyncio.Future[Any]", object]


@dataclass(frozen=True)
class BatchWritten:
    """The wal-index header before and after a batch's transactions, and whether this
    connection was the only one to commit in between: then `after` differs from
    `before` by this batch's writes alone, which the caller knows."""

    before: bytes
    after: bytes
    alone: bool


def _run_batch(
    raw: sqlite3.Connection,
    works: list[Callable[[sqlite3.Connection], object]],
    wal: WalIndexHeader | None,
    on_batch: Callable[[BatchWritten, Sequence[tuple[bool, object]]], None] | None,
    notes: list[object],
) -> list[tuple[bool, object]]:
    if wal is None or on_batch is None:
        return _run_transactions(raw, works)
    # data_version changes when another connection commits (never for this one's
    # own commits). Read before the first look and after the last, it covers the
    # whole span between the two looks.
    try:
        seen = raw.execute("PRAGMA data_version").fetchone()[0]
    except sqlite3.Error:
        seen = None  # no proof: not alone
    before = wal.look()
    outcomes = _run_transactions(raw, works)
    after = wal.look()
    try:
        alone = seen is not None and raw.execute("PRAGMA data_version").fetchone()[0] == seen
    except sqlite3.Error:
        alone = False
    try:
        on_batch(BatchWritten(before, after, alone),
                 [(ok, note) for (ok, _), note in zip(outcomes, notes, strict=True)])
    except Exception:  # a bug: on_batch drops what it shares before it raises
        _log.exception("on_batch failed; the batch is committed all the same")
    return outcomes


def _run_transactions(
    raw: sqlite3.Connection, works: list[Callable[[sqlite3.Connection], object]]
) -> list[tuple[bool, object]]:
    """The batch in one IMMEDIATE transaction: one COMMIT, so one write of the WAL's
    pages per batch instead of per work (most of the writer's cost under load).
    First all together, no savepoints (two statements a work, each a GIL hand-off
    with the event loop); if one raises, that is rolled back (a batch of one ends
    there) and the batch runs again with each work in a savepoint, so the one that
    fails rolls back alone (a work only writes through `raw`, so a rolled-back run
    leaves no trace)."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        results = [work(raw) for work in works]
        raw.execute("COMMIT")
    except Exception as exc:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        if len(works) == 1:  # nothing else to keep: no second run
            return [(False, exc)]
    else:
        return [(True, result) for result in results]
    return _run_in_savepoints(raw, works)


def _run_in_savepoints(
    raw: sqlite3.Connection, works: list[Callable[[sqlite3.Connection], object]]
) -> list[tuple[bool, object]]:
    """Each work in its own savepoint, rolled back alone when it raises. Results
    count only once the COMMIT succeeded; if SQLite ended the transaction itself (an
    I/O error) or the COMMIT fails, the works that had succeeded fail with that error."""
    outcomes: list[tuple[bool, object]] = []
    kept: list[int] = []  # indexes of the outcomes that wait for the COMMIT
    raw.execute("BEGIN IMMEDIATE")
    for work in works:
        raw.execute("SAVEPOINT work")
        try:
            result = work(raw)
        except Exception as exc:
            if raw.in_transaction:
                raw.execute("ROLLBACK TO work")
                raw.execute("RELEASE work")
            else:  # SQLite rolled the whole transaction back: start another
                _fail(outcomes, kept, exc)
                raw.execute("BEGIN IMMEDIATE")
            outcomes.append((False, exc))
            continue
        raw.execute("RELEASE work")
        kept.append(len(outcomes))
        outcomes.append((True, result))
    try:
        raw.execute("COMMIT")
    except Exception as exc:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        _fail(outcomes, kept, exc)
    return outcomes


def _fail(outcomes: list[tuple[bool, object]], kept: list[int], exc: Exception) -> None:
    for i in kept:
        outcomes[i] = (False, exc)
    kept.clear()
