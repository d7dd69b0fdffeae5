"""The SQLite engine's rows kept for get (documents_sqlite_kept.KeptRows):
a get answers from them only while no one else has committed; this store's own
writes update them. Every answer is checked against the file itself."""

from __future__ import annotations

import sqlite3

import pytest

from services.runtime.documents import Collection, Conflict, Schema, UnitOfWork, open_document_store

SCHEMA = Schema("kept", (Collection("things", fields=("n",)), Collection("bits", blob="b")))


class CountingPoint:
    """The point reader, counting the queries get makes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.queries = conn, 0

    def execute(self, *args):
        self.queries += 1
        return self.conn.execute(*args)

    def close(self) -> None:
        self.conn.close()


async def _open(path):
    store = await open_document_store(SCHEMA, sqlite_path=str(path))
    store._point = CountingPoint(store._point)
    return store


async def _commit(store, build) -> None:
    uow = UnitOfWork()
    build(uow)
    await store.commit(uow)


@pytest.fixture
async def pair(tmp_path):
    mine, theirs = await _open(tmp_path / "k.db"), await _open(tmp_path / "k.db")
    yield mine, theirs
    await mine.close()
    await theirs.close()


async def test_own_writes_update_the_kept_rows_without_a_query(pair, tmp_path):
    mine, _ = pair
    await _commit(mine, lambda u: u.insert("things", {"_id": "a", "n": 1}))
    first = await mine.get("things", "a")
    queries = mine._point.queries
    await _commit(mine, lambda u: u.replace("things", {**first, "n": 2}))
    assert await mine.get("things", "a") == {"_id": "a", "n": 2, "_v": 2}
    await _commit(mine, lambda u: u.delete("things", "a"))
    assert await mine.get("things", "a") is None
    assert mine._point.queries == queries  # both answered from the kept rows
    with sqlite3.connect(tmp_path / "k.db") as disk:  # the truth on disk
        assert disk.execute('SELECT count(*) FROM "things"').fetchone() == (0,)


async def test_a_failed_write_leaves_the_kept_row_as_stored(pair):
    mine, _ = pair
    await _commit(mine, lambda u: u.insert("things", {"_id": "a", "n": 1}))
    doc = await mine.get("things", "a")
    with pytest.raises(Conflict):
        await _commit(mine, lambda u: (
            u.replace("things", {**doc, "n": 5}), u.replace("things", {**doc, "n": 6})))
    assert (await mine.get("things", "a"))["n"] == 1


async def test_another_stores_commit_ends_the_kept_rows_even_between_own_writes(pair):
    mine, theirs = pair
    await _commit(mine, lambda u: (u.insert("things", {"_id": "a", "n": 1}),
                                   u.insert("things", {"_id": "b", "n": 1})))
    a = await mine.get("things", "a")
    await mine.get("things", "b")
    b_theirs = await theirs.get("things", "b")
    await _commit(theirs, lambda u: u.replace("things", {**b_theirs, "n": 7}))
    await _commit(mine, lambda u: u.replace("things", {**a, "n": 2}))  # own write after
    assert (await mine.get("things", "b"))["n"] == 7
    assert (await mine.get("things", "a"))["n"] == 2


async def test_concurrent_own_and_foreign_writes_never_leave_a_stale_row(pair):
    import asyncio

    mine, theirs = pair
    await _commit(mine, lambda u: u.insert("things", {"_id": "x", "n": 0}))
    await _commit(mine, lambda u: u.insert("things", {"_id": "y", "n": 0}))

    async def bump(store, key, times):
        for _ in range(times):
            doc = await store.get("things", key)
            await _commit(store, lambda u, d=doc: u.replace("things", {**d, "n": d["n"] + 1}))

    await asyncio.gather(bump(mine, "x", 30), bump(theirs, "y", 30), bump(mine, "x", 0))
    assert (await mine.get("things", "y"))["n"] == 30
    assert (await theirs.get("things", "x"))["n"] == 30


class Bytes(bytes):
    """Bytes SQLite hands back as plain bytes."""


async def test_a_blob_row_is_kept_as_read(pair):
    mine, _ = pair
    await _commit(mine, lambda u: u.insert("bits", {"_id": "a", "b": b"\x00\x01"}))
    doc = await mine.get("bits", "a")
    await _commit(mine, lambda u: u.replace("bits", {**doc, "b": Bytes(b"\x02")}))
    again = await mine.get("bits", "a")
    assert again["b"] == b"\x02" and type(again["b"]) is bytes


async def test_a_commit_by_another_connection_during_own_batch_ends_the_kept_rows(pair, tmp_path):
    """The race the batch's data_version check is for: someone commits between the
    writer's first look at the header and its transaction (or after the COMMIT,
    before the last look). Injected at the writer's first look."""
    import threading

    mine, _ = pair
    await _commit(mine, lambda u: (u.insert("things", {"_id": "a", "n": 1}),
                                   u.insert("things", {"_id": "b", "n": 1})))
    a = await mine.get("things", "a")
    assert (await mine.get("things", "b"))["n"] == 1  # kept
    real = mine._kept.wal
    loop_thread = threading.current_thread()

    class Interloper:
        injected = False

        def look(self):
            header = real.look()
            if threading.current_thread() is not loop_thread and not self.injected:
                self.injected = True
                with sqlite3.connect(tmp_path / "k.db", isolation_level=None) as other:
                    other.execute(
                        """UPDATE "things" SET "_v" = "_v" + 1, "n" = 9,"""
                        """ "_doc" = '{"_id":"b","n":9}' WHERE "_id" = 'b'""")
            return header

    mine._writer._wal = Interloper()
    await _commit(mine, lambda u: u.replace("things", {**a, "n": 2}))
    assert mine._writer._wal.injected
    assert (await mine.get("things", "b"))["n"] == 9


async def test_a_row_read_while_a_batch_lands_is_not_kept(pair, tmp_path):
    """A get reads a row; before it can keep it, a batch of this store's commits a
    change to that row and moves the kept rows on to its header (on the writer's
    thread). The row read first must not be kept under the new header."""
    from services.runtime.storage import BatchWritten

    mine, _ = pair
    await _commit(mine, lambda u: u.insert("things", {"_id": "a", "n": 1}))
    await mine.get("things", "b")  # the kept rows are valid under the current header
    point = mine._point

    class BatchLandsDuringTheRead:
        def execute(self, sql, params):
            cur = point.execute(sql, params)
            row = cur.fetchone()  # the row as it was
            before = mine._kept.wal.look()
            with sqlite3.connect(tmp_path / "k.db", isolation_level=None) as other:
                other.execute("""UPDATE "things" SET "_v" = 2, "n" = 2,"""
                              """ "_doc" = '{"_id":"a","n":2}' WHERE "_id" = 'a'""")
            mine._kept.after_batch(BatchWritten(before, mine._kept.wal.look(), alone=True),
                              [(True, [(("things", "a"), (2, b'{"_id":"a","n":2}'))])])
            return _Rows(row)

        def close(self):
            point.close()

    mine._point = BatchLandsDuringTheRead()
    assert (await mine.get("things", "a"))["n"] == 1  # read before the batch landed
    mine._point = point
    assert (await mine.get("things", "a"))["n"] == 2


class _Rows:
    def __init__(self, row):
        self.row = row

    def fetchone(self):
        return self.row


async def test_the_kept_rows_are_bounded_in_bytes_and_skip_big_blobs(pair, monkeypatch):
    """A tagging history row or bitmap can be large: a row over the per-row bound is
    read every time, and the rows kept together stay within the byte bound."""
    from services.runtime import documents_sqlite_kept

    mine, _ = pair
    big = b"x" * (documents_sqlite_kept.KEPT_ROW_BYTES + 1)
    await _commit(mine, lambda u: u.insert("bits", {"_id": "big", "b": big}))
    queries = mine._point.queries
    for _ in range(3):
        assert (await mine.get("bits", "big"))["b"] == big
    assert mine._point.queries == queries + 3  # never kept
    monkeypatch.setattr(documents_sqlite_kept, "KEPT_BYTES", 3000)
    for i in range(10):
        await _commit(mine, lambda u, i=i: u.insert("bits", {"_id": f"r{i}", "b": b"y" * 500}))
    for i in range(10):
        await mine.get("bits", f"r{i}")
    assert mine._kept.bytes <= 3000 and 0 < len(mine._kept.rows) < 10
    for i in range(10):  # whatever was dropped is read again, right
        assert (await mine.get("bits", f"r{i}"))["b"] == b"y" * 500


async def test_a_process_reading_the_file_keeps_the_rows_and_one_writing_ends_them(pair, tmp_path):
    """A process that opens the file and only reads (sqlite3 in a shell, a backup)
    makes SQLite rewrite the wal-index header's change counter and checksum: nothing
    was committed, so the kept rows stay. A process that writes ends them."""
    import subprocess
    import sys

    mine, _ = pair
    await _commit(mine, lambda u: u.insert("things", {"_id": "a", "n": 1}))
    await mine.get("things", "a")
    path = str(tmp_path / "k.db")

    def other_process(sql: str) -> None:
        code = (f"import sqlite3; c = sqlite3.connect({path!r}, isolation_level=None); "
                f"c.execute({sql!r}).fetchall(); c.close()")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    other_process('SELECT count(*) FROM "things"')
    queries = mine._point.queries
    assert (await mine.get("things", "a"))["n"] == 1
    assert mine._point.queries == queries  # still kept
    other_process("""UPDATE "things" SET _doc = CAST(json_set(CAST(_doc AS TEXT), '$.n', 5)"""
                  """ AS BLOB), n = 5""")
    assert (await mine.get("things", "a"))["n"] == 5
    assert mine._point.queries == queries + 1


FILTERED = Schema("filtered", (Collection("counters", key_filter=True),))


async def test_the_key_filter_answers_absent_keys_without_a_read_until_someone_else_commits(
        tmp_path):
    path = str(tmp_path / "f.db")
    first = await open_document_store(FILTERED, sqlite_path=path)
    await _commit(first, lambda u: u.insert("counters", {"_id": "old"}))
    await first.close()
    mine = await open_document_store(FILTERED, sqlite_path=path)  # "old" read at open
    theirs = await open_document_store(FILTERED, sqlite_path=path)
    try:
        assert await mine.may_exist("counters", "old")
        keys = [f"m{i}" for i in range(1000)]
        absent = [k for k in keys if not await mine.may_exist("counters", k)]
        assert len(absent) > 950  # a Bloom filter: a few "maybe"s are allowed
        await _commit(mine, lambda u: u.insert("counters", {"_id": "m1"}))
        assert await mine.may_exist("counters", "m1")  # its own batch added it
        assert not await mine.may_exist("counters", absent[-1])
        # Another connection's commit: its keys are unknown, so every key is "maybe".
        await _commit(theirs, lambda u: u.insert("counters", {"_id": absent[-1]}))
        assert await mine.may_exist("counters", absent[-1])
        assert await mine.get("counters", absent[-1]) == {"_id": absent[-1], "_v": 1}
        assert await mine.may_exist("counters", "never-written")
    finally:
        await mine.close()
        await theirs.close()


async def test_a_commit_by_another_connection_around_own_batch_turns_the_filter_off(tmp_path):
    path = str(tmp_path / "f.db")
    mine = await open_document_store(FILTERED, sqlite_path=path)
    try:
        assert not await mine.may_exist("counters", "x")
        with sqlite3.connect(path) as other:  # between the filter's look and the next batch
            other.execute('INSERT INTO "counters" ("_id", "_v", "_doc") VALUES (?, 1, ?)',
                          ("x", b'{"_id": "x"}'))
        await _commit(mine, lambda u: u.insert("counters", {"_id": "y"}))
        assert await mine.may_exist("counters", "x")
        assert await mine.get("counters", "x") is not None
    finally:
        await mine.close()
