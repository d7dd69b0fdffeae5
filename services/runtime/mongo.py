"""What every service's MongoDB store (services/<name>/store/mongo.py) is built on: the
one copy of the mechanics those backends share, so that a store's file holds only its own
schema, queries and write order. With services.runtime.storage.open_mongo, this module
and the stores' mongo.py files are the only code that touches motor or pymongo, so a move
to PyMongo's AsyncMongoClient stays small.

A store subclasses MongoStore (before its service's store interface) and declares its
MongoSchema. MongoStore.open() opens a client on a URI (closed again by close()), or takes
a database as given (a motor database, or mongomock-motor's, left open by close()); then
  - asks the server what it can do with the `hello` command: multi-document transactions
    on a replica set member or a mongos (`_transactions`); mongomock does not implement
    `hello` at all, which is how it is told from a real server (`_full_query_language`:
    mongomock's bulk_write does not accept what pymongo 4.20 passes, and it lacks some
    query operators, such as `$mod`);
  - creates the schema's collections up front (not every server creates collections
    inside a transaction; one that a concurrent open made is fine) and every index its
    queries need, idempotently;
  - if the schema says so, repairs the counters (below).
The store reaches its collections as `self._c.<collection name>` (only the declared
ones) and the database as `self._db`.

Counters. Sequence numbers and dense ids come from the `counters` collection: `_id` = the
sequence's name, `n` = how many numbers it has handed out. _next_ids() draws a block with
one atomic `$inc` (upserting the counter), meant to run before a transaction, so that
concurrent writers do not all conflict on one counter document and a retried
transaction reuses its numbers; a refused write leaves a gap. A sequence starts at its
Counter's `first`. _repair_counter() raises a counter with `$max` to at least what its
collection already holds (its highest `_id`), so a database restored without `counters`
carries on where it was.

Transactions. _atomically(write) runs `write(session)` in one transaction where the
server has them, and `write(None)` where it has not (mongomock, a standalone mongod);
what that means for a store's atomicity is its own docstring's business. Two ways to
meet a transient transaction error (a concurrent transaction wrote the same documents),
chosen by the caller: by default the driver retries the whole write
(ClientSession.with_transaction); with `on_transient_error`, it runs once and the error
is raised as that exception, for a caller whose service layer reloads and retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar, Self, TypeVar, cast

from pymongo import DESCENDING, ReplaceOne, ReturnDocument, UpdateOne, WriteConcern
from pymongo.errors import CollectionInvalid, PyMongoError

from services.runtime.storage import open_mongo

T = TypeVar("T")

# collection -> [(keys, options)], each passed to create_index
Indexes = Mapping[str, Iterable[tuple[list[tuple[str, int]], dict[str, Any]]]]


@dataclass(frozen=True)
class Counter:
    """A sequence: the collection whose `_id`s it hands out, and its first number."""

    collection: str
    first: int = 1


@dataclass(frozen=True)
class MongoSchema:
    """What open() creates: collections and indexes; and the store's sequences, with
    whether open() repairs their counters."""

    collections: tuple[str, ...]
    indexes: Indexes
    counters: Mapping[str, Counter] = field(default_factory=dict)
    repair_counters: bool = False


async def _server_info(db: Any) -> tuple[bool, bool]:
    """(transactions, full query language); the module docstring explains both."""
    try:
        hello = await db.command("hello")
    except NotImplementedError:
        return False, False
    return "setName" in hello or hello.get("msg") == "isdbgrid", True


class MongoStore:
    """The base of a service's MongoDB store: opening, closing, what the server can do,
    counters, transactions and bulk upserts. A subclass sets SCHEMA."""

    SCHEMA: ClassVar[MongoSchema]

    def __init__(
        self, db: Any, *, transactions: bool, full_query_language: bool, owns_client: bool
    ) -> None:
        self._db = db
        self._c = SimpleNamespace(**{name: db[name] for name in self.SCHEMA.collections})
        self._transactions = transactions
        self._full_query_language = full_query_language
        self._owns_client = owns_client

    @classmethod
    async def open(cls, *, uri: str, db_name: str, database: Any = None) -> Self:
        """`database` is used as given and left open by close(); without it a client is
        opened on `uri` and closed by close()."""
        owns_client = database is None
        db = open_mongo(uri, db_name) if owns_client else database
        try:
            transactions, full = await _server_info(db)
            store = cls(
                db, transactions=transactions, full_query_language=full, owns_client=owns_client
            )
            schema = cls.SCHEMA
            existing = set(await db.list_collection_names())
            for name in schema.collections:
                if name not in existing:
                    with contextlib.suppress(CollectionInvalid):  # a concurrent open made it
                        await db.create_collection(name)
            for name, specs in schema.indexes.items():
                for keys, options in specs:
                    await db[name].create_index(keys, **options)
            if schema.repair_counters:
                for counter in schema.counters:
                    await store._repair_counter(counter)
        except BaseException:
            if owns_client:
                db.client.close()
            raise
        return store

    async def close(self) -> None:
        if self._owns_client:
            self._db.client.close()

    # -- counters --
    async def _next_ids(self, name: str, count: int) -> list[int]:
        """The next `count` numbers of sequence `name`, in order."""
        if count == 0:
            return []
        first = self.SCHEMA.counters[name].first
        doc = await self._db["counters"].find_one_and_update(
            {"_id": name}, {"$inc": {"n": count}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return list(range(doc["n"] - count + first, doc["n"] + first))

    async def _repair_counter(self, name: str) -> None:
        """Raise the counter to at least what its collection holds."""
        counter = self.SCHEMA.counters[name]
        top = await self._db[counter.collection].find_one(
            {}, {"_id": 1}, sort=[("_id", DESCENDING)]
        )
        if top is not None:
            await self._db["counters"].update_one(
                {"_id": name}, {"$max": {"n": int(top["_id"]) - counter.first + 1}}, upsert=True
            )

    # -- writes --
    async def _atomically(
        self,
        write: Callable[[Any], Awaitable[T]],
        *,
        on_transient_error: Callable[[], Exception] | None = None,
    ) -> T:
        """Run `write(session)` in one majority-acknowledged transaction where the server
        has them, else `write(None)`. A transient transaction error is retried by the
        driver, or, with `on_transient_error`, raised as `on_transient_error()`."""
        if not self._transactions:
            return await write(None)
        majority = WriteConcern(w="majority")
        if on_transient_error is None:
            async with await self._db.client.start_session() as s:
                return cast(T, await s.with_transaction(write, write_concern=majority))
        try:
            async with (
                await self._db.client.start_session() as s,
                s.start_transaction(write_concern=majority),
            ):
                return await write(s)
        except PyMongoError as exc:
            if exc.has_error_label("TransientTransactionError"):
                raise on_transient_error() from exc
            raise

    async def _upsert_many(
        self,
        collection: Any,
        ops: list[tuple[dict[str, Any], dict[str, Any]]],
        *,
        replace: bool,
        session: Any = None,
        ordered: bool = True,
    ) -> int:
        """Upsert each (filter, replacement or update); returns how many were inserted.
        One bulk_write on a real server; one statement per document on mongomock."""
        if not ops:
            return 0
        if self._full_query_language:
            make = ReplaceOne if replace else UpdateOne
            result = await collection.bulk_write(
                [make(f, d, upsert=True) for f, d in ops], ordered=ordered, session=session
            )
            upserted: int = result.upserted_count
            return upserted
        write = collection.replace_one if replace else collection.update_one
        inserted = 0
        for f, d in ops:
            result = await write(f, d, upsert=True, session=session)
            inserted += result.upserted_id is not None
        return inserted


# -- reads --
async def find_docs(
    collection: Any,
    query: dict[str, Any],
    sort: list[tuple[str, int]] | None,
    limit: int,
    projection: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Like SQL's LIMIT: 0 returns nothing, a negative limit everything."""
    if limit == 0:
        return []
    cursor = collection.find(query, projection)
    if sort:
        cursor = cursor.sort(sort)
    if limit > 0:
        cursor = cursor.limit(limit)
    docs: list[dict[str, Any]] = await cursor.to_list(None)
    return docs
