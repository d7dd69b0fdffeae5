"""Opening the two storage backends every service store sits on.

SQLite (aiosqlite) is the embedded default: one file per service under the data
directory, WAL, foreign keys on. MongoDB (motor) is production: chosen when
MONGODB_URI is set, majority writes. Every motor import stays in the services'
store/mongo.py, here and in services.runtime.mongo (what those stores are built on), so
moving to PyMongo's async client is a small change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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


def open_mongo(uri: str, db_name: str):  # -> motor AsyncIOMotorDatabase
    from motor.motor_asyncio import AsyncIOMotorClient
    from pymongo import WriteConcern

    client = AsyncIOMotorClient(uri, tz_aware=True, uuidRepresentation="standard")
    return client.get_database(db_name, write_concern=WriteConcern(w="majority"))


async def sqlite_transaction(
    conn: aiosqlite.Connection, lock: asyncio.Lock, work: Callable[[], Awaitable[T]]
) -> T:
    """Runs `work` in one IMMEDIATE transaction on `conn` (the store's single writer,
    serialised by `lock`): COMMIT when it returns, ROLLBACK when it raises.

    Shielded from cancellation: a client that gives up mid-write must not leave the
    transaction open (every later write would fail); the write finishes or rolls
    back, then the caller sees its cancellation."""

    async def run() -> T:
        async with lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                result = await work()
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
            return result

    return await asyncio.shield(asyncio.ensure_future(run()))
