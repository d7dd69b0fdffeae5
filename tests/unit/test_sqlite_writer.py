"""The stores' SQLite writer: transactions in arrival order, written in groups, each
committed or rolled back on its own. A real SQLite file, no sockets."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from services.runtime.storage import SqliteWriter, open_sqlite


@pytest.fixture
async def writer(tmp_path):
    conn = await open_sqlite(tmp_path / "w.db")
    await conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    w = SqliteWriter(conn)
    yield w
    await w.close()


def insert(k: str, v: int = 0):
    def work(raw: sqlite3.Connection) -> str:
        raw.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))
        return k

    return work


async def rows(w: SqliteWriter) -> list[tuple]:
    return [tuple(r) for r in await w.conn.execute_fetchall("SELECT k, v FROM t ORDER BY k")]


async def test_concurrent_transactions_share_thread_jobs_and_keep_their_order(writer):
    jobs = 0
    execute = writer.conn._execute

    async def counting(fn, *args):
        nonlocal jobs
        jobs += 1
        return await execute(fn, *args)

    writer.conn._execute = counting
    order: list[int] = []

    def append(i: int):
        def work(raw: sqlite3.Connection) -> int:
            raw.execute("INSERT INTO t (k, v) VALUES (?, ?)", (f"k{i:03d}", i))
            order.append(i)
            return i

        return work

    got = await asyncio.gather(*(writer.transaction(append(i)) for i in range(100)))
    assert got == list(range(100)) and order == list(range(100))
    assert len(await rows(writer)) == 100
    # The first transaction goes alone; the 99 that queued behind it go together.
    assert jobs < 10


async def test_a_failing_transaction_rolls_back_alone(writer):
    def half_then_fail(raw: sqlite3.Connection) -> None:
        raw.execute("INSERT INTO t (k, v) VALUES ('half', 1)")
        raise ValueError("refused")

    results = await asyncio.gather(
        writer.transaction(insert("a")),
        writer.transaction(half_then_fail),
        writer.transaction(insert("a")),  # primary key taken: sqlite3.IntegrityError
        writer.transaction(insert("b")),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[3] == "b"
    assert isinstance(results[1], ValueError) and isinstance(results[2], sqlite3.IntegrityError)
    assert await rows(writer) == [("a", 0), ("b", 0)]


async def test_a_caller_cancelled_before_its_turn_writes_nothing(writer):
    first = asyncio.ensure_future(writer.transaction(insert("first")))
    second = asyncio.ensure_future(writer.transaction(insert("second")))
    await asyncio.sleep(0)  # both queued, neither written yet
    second.cancel()
    assert await first == "first"
    with pytest.raises(asyncio.CancelledError):
        await second
    await writer.transaction(insert("third"))
    assert [k for k, _ in await rows(writer)] == ["first", "third"]


async def test_a_batch_commits_once_and_a_failure_in_it_still_rolls_back_alone(writer):
    statements: list[str] = []
    await writer.conn.set_trace_callback(statements.append)  # called on the writer's thread
    blocker = asyncio.ensure_future(writer.transaction(insert("first")))
    await asyncio.sleep(0)  # the first may go alone; the next ones queue behind it

    def fail(raw: sqlite3.Connection) -> None:
        raw.execute("INSERT INTO t (k, v) VALUES ('partial', 1)")
        raise ValueError("refused")

    together = await asyncio.gather(*(writer.transaction(insert(f"k{i}")) for i in range(5)))
    await blocker
    assert together == [f"k{i}" for i in range(5)]
    assert statements.count("COMMIT") <= 2  # the five in one (the first maybe alone)

    statements.clear()
    mixed = await asyncio.gather(
        writer.transaction(insert("x")),
        writer.transaction(fail),
        writer.transaction(insert("y")),
        return_exceptions=True,
    )
    assert mixed[0] == "x" and isinstance(mixed[1], ValueError) and mixed[2] == "y"
    keys = [k for k, _ in await rows(writer)]
    assert "partial" not in keys and {"x", "y", "first"} <= set(keys)


async def test_on_batch_sees_each_batch_and_its_failure_strands_no_caller(tmp_path):
    """on_batch gets the headers around every batch and each work's (succeeded, note);
    if it raises, the batch's callers still get their outcomes."""
    from services.runtime.storage import WalIndexHeader

    conn = await open_sqlite(tmp_path / "w.db")
    await conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    wal = WalIndexHeader.open(tmp_path / "w.db")
    assert wal is not None
    seen = []

    def on_batch(batch, works):
        seen.append((batch, list(works)))
        if len(seen) == 2:
            raise RuntimeError("a bug in the hook")

    w = SqliteWriter(conn, wal, on_batch)
    try:
        assert await w.transaction(insert("a"), note="a") == "a"
        batch, works = seen[0]
        assert batch.alone and batch.before != batch.after and works == [(True, "a")]
        results = await asyncio.gather(
            w.transaction(insert("b"), note="b"), w.transaction(insert("a"), note="dup"),
            return_exceptions=True)
        assert results[0] == "b" and isinstance(results[1], sqlite3.IntegrityError)
        assert await w.transaction(insert("c")) == "c"  # the writer carries on
        assert await rows(w) == [("a", 0), ("b", 0), ("c", 0)]
    finally:
        wal.close()
        await w.close()
