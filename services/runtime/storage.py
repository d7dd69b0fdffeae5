"""Opening the two storage backends every service store sits on.

SQLite (aiosqlite) is the embedded default: one file per service under the data
directory, WAL, foreign keys on. MongoDB (motor) is production: chosen when
MONGODB_URI is set, majority writes. Every motor import stays in the services'
store/mongo.py, here and in services.runtime.mongo (what those stores are built on), so
moving to PyMongo's async client is a small change.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

T = TypeVar("T")


async def open_sqlite(path: Path | str) -> aiosqlite.Connection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable across process crashes (not power loss): fine for
    # the embedded default; production durability comes from MongoDB w:majority.
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA busy_timeout=5000")
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


def open_mongo(uri: str, db_name: str):  # -> motor AsyncIOMotorDatabase
    from motor.motor_asyncio import AsyncIOMotorClient
    from pymongo import WriteConcern

    client = AsyncIOMotorClient(uri, tz_aware=True, uuidRepresentation="standard")
    return client.get_database(db_name, write_concern=WriteConcern(w="majority"))


async def sqlite_transaction(
    conn: aiosqlite.Connection, lock: asyncio.Lock, work: Callable[[sqlite3.Connection], T]
) -> T:
    """Runs `work(raw_connection)` in one IMMEDIATE transaction on the store's writer:
    COMMIT when it returns, ROLLBACK when it raises.

    The whole transaction is one job on the aiosqlite connection's own thread (one
    thread hop instead of one per statement: the member write path's main cost), so
    `work` is a plain synchronous function. A caller cancelled mid-write cannot leave
    the transaction open: the job runs to COMMIT or ROLLBACK on that thread anyway."""

    def run(raw: sqlite3.Connection) -> T:
        raw.execute("BEGIN IMMEDIATE")
        try:
            result = work(raw)
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")
        return result

    async with lock:
        # aiosqlite runs every statement through Connection._execute on its thread; we
        # hand it the whole transaction instead (private API, pinned in pyproject).
        job = asyncio.ensure_future(conn._execute(run, conn._conn))
        return await asyncio.shield(job)
