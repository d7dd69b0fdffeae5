"""The document store: the one storage API every service writes its store module
against, once. Two real engines sit behind it: SQLite (the embedded default, one file
per service, WAL, one writer with group commit; `documents_sqlite.py`) and MongoDB
through motor (production: replica-set transactions, `w: majority`;
`documents_mongo.py`, the only module that touches motor). No service contains SQL
or motor calls. tests/contract/test_documents.py holds the two equal.

A service declares its collections (a `Schema`) and reads and writes documents:

    MEMBERS = Collection("members", indexes=(Index(("store_id", "_id")),))
    store = await open_document_store(Schema("member", (MEMBERS, ...)), ...)
    m = await store.get("members", "m-1")
    uow = UnitOfWork()
    m["points"] += 10
    uow.replace("members", m)          # guarded: fails if someone else changed it
    uow.emit(event_bytes)              # outbox, published after the commit
    await store.commit(uow)            # all or nothing

Documents are dicts of JSON-like values (str, int, float, bool, None, lists, dicts)
with a key `_id` (str, or int where the collection says so) and a version `_v` the
store maintains (1 after the insert, +1 per write). A collection may name one `blob`
field whose value is bytes (bitmaps, packed rows), kept outside the JSON. Times are
epoch microseconds (services.runtime.clock.epoch_micros), so both engines compare and
sort them the same way.

Queries are a small subset of MongoDB's: equality, `$in`, `$nin`, `$ne`, `$lt`,
`$lte`, `$gt`, `$gte`, on top-level fields that the collection declares as queryable
(its indexes' fields, their partial filters' fields and `fields`); ordering by such
fields, ties broken by `_id`; a limit. Anything else is refused (ValueError) on both
engines, so a query that works on one works on the other. MongoDB's semantics: None
matches a missing field, `$ne` and `$nin` match it too, None sorts first. Queryable
fields hold str, int, float, bool or None (checked on every write), one type per
field (the engines order different types differently). A unique index's fields are
required in the documents it covers (use `partial` to cover only some).

A unit of work commits atomically: documents, the outbox events, the idempotency
record (the first response), processed-event marks and timers. It raises `Conflict`
(a guarded document changed or vanished since it was read) or `DuplicateKey` (an
insert hit a taken `_id` or unique index, an idempotency key or an event mark that
exists) and then writes nothing. Write a document once per unit of work (a guard
compares the `_v` it was read with). A unit of work is one transaction: a put_many of
thousands of documents, not millions.
"""

from __future__ import annotations

import abc
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

Doc = dict[str, Any]
Key = str | int
# Reserved collection names of the runtime's own records, for DuplicateKey.collection.
IDEMPOTENCY = "_idempotency"
PROCESSED = "_processed"
TIMERS = "_timers"


class Conflict(Exception):
    """A guarded write found the document changed (or gone) since it was read: the
    unit of work wrote nothing; reload and decide again."""

    def __init__(self, collection: str, key: Key) -> None:
        super().__init__(f"{collection}/{key} changed concurrently")
        self.collection = collection
        self.key = key


class DuplicateKey(Exception):
    """An insert found its `_id`, or the value of a unique index, taken (or an
    idempotency record or event mark that already exists): nothing was written.
    `fields` names the index as declared (("_id",) for the key; an insert whose `_id`
    is taken says so whatever else it hits); for the runtime's records, `collection`
    is IDEMPOTENCY with ("scope", "key") or PROCESSED with ("consumer", "event_id")."""

    def __init__(self, collection: str, key: Key, fields: tuple[str, ...] = ("_id",)) -> None:
        super().__init__(f"{collection}/{key}: {', '.join(fields)} already taken")
        self.collection = collection
        self.key = key
        self.fields = fields


@dataclass(frozen=True)
class Index:
    """Fields in order; a field name prefixed with "-" sorts descending. `unique`
    refuses a second document with the same values; `partial` indexes only the
    documents that match it (a query in the subset above), e.g. open lots."""

    fields: tuple[str, ...]
    unique: bool = False
    partial: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Collection:
    name: str
    indexes: tuple[Index, ...] = ()
    # Queryable fields that no index names (for filters on small result sets).
    fields: tuple[str, ...] = ()
    key_type: type[str] | type[int] = str
    blob: str | None = None  # the one field holding bytes, if any
    # Keep a filter of the collection's keys, so that `get` (and `may_exist`) answers
    # most keys never written without a read (the SQLite engine; DocumentStore.may_exist).
    key_filter: bool = False

    @cached_property
    def queryable(self) -> frozenset[str]:
        """`_id`, the indexes' fields (partial filters' too) and `fields`."""
        names = {f.lstrip("-") for index in self.indexes for f in index.fields}
        partial = {f for index in self.indexes for f in (index.partial or {})}
        return frozenset({"_id", *names, *partial, *self.fields})


@dataclass(frozen=True)
class Schema:
    """A service's collections and named sequences (counters for dense ids)."""

    service: str
    collections: tuple[Collection, ...]
    sequences: tuple[str, ...] = ()

    def collection(self, name: str) -> Collection:
        for c in self.collections:
            if c.name == name:
                return c
        raise KeyError(f"{self.service} declares no collection {name!r}")


@dataclass(frozen=True)
class Timer:
    """Fires at least once at or after `due_at` (epoch microseconds); `id` is unique
    (setting an existing id moves it), `kind` names the handler."""

    id: str
    kind: str
    due_at: int
    payload: Mapping[str, Any] = field(default_factory=dict)
    version: int = 0  # as read; firing deletes it guarded by this


def timer_version() -> int:
    """A fresh version for every setting of a timer, never reused for its id (a
    recurring timer fired and set again in one unit of work must not be fireable
    again by a replica that read it before): random, 62 bits."""
    return secrets.randbits(62) + 1


@dataclass(frozen=True)
class IdempotencyRecord:
    scope: str
    key: str
    fingerprint: str
    response: bytes
    expires_at: int  # epoch microseconds; pruned after


Op = tuple[str, str, Any]  # (op, collection, argument): see UnitOfWork


class UnitOfWork:
    """Writes collected in memory, committed all or nothing by DocumentStore.commit.
    Operations apply in the order they were added."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.events: list[bytes] = []
        self.idempotency: IdempotencyRecord | None = None
        self.processed: list[tuple[str, str, int]] = []  # (consumer, event id, made at)
        self.timers: list[Timer] = []
        self.fired: list[Timer] = []  # timers deleted, guarded by their version
        self.cancelled: list[str] = []  # timer ids deleted unguarded

    def insert(self, collection: str, doc: Doc) -> None:
        """A new document: DuplicateKey if its `_id` or a unique index is taken."""
        self.ops.append(("insert", collection, doc))

    def replace(self, collection: str, doc: Doc) -> None:
        """The whole document, guarded by the `_v` it was read with: Conflict if the
        stored one has another version or is gone."""
        self.ops.append(("replace", collection, doc))

    def put(self, collection: str, doc: Doc) -> None:
        """Insert or replace, unguarded (unique indexes still apply)."""
        self.ops.append(("put", collection, doc))

    def put_many(self, collection: str, docs: Sequence[Doc]) -> None:
        """Bulk insert-or-replace, unguarded: imports, bitmaps, run results."""
        self.ops.append(("put_many", collection, docs))

    def delete(self, collection: str, key: Key, version: int | None = None) -> None:
        """Delete by key; with `version`, guarded (Conflict if changed or gone)."""
        self.ops.append(("delete", collection, (key, version)))

    def emit(self, *events: bytes) -> None:
        """Outbox: serialised event envelopes, published after the commit."""
        self.events.extend(events)

    def remember(self, record: IdempotencyRecord) -> None:
        """The first response of an idempotent call: DuplicateKey(IDEMPOTENCY) if the
        key was recorded meanwhile."""
        self.idempotency = record

    def mark_processed(self, consumer: str, event_id: str, at: int | None = None) -> None:
        """DuplicateKey(PROCESSED) if this consumer applied the event already. `at`
        (epoch microseconds, default now) is what prune's `processed_before` compares."""
        self.processed.append((consumer, event_id, time.time_ns() // 1000 if at is None else at))

    def set_timer(self, timer: Timer) -> None:
        self.timers.append(timer)

    def fire(self, timer: Timer) -> None:
        """Delete a due timer as read: Conflict if another replica fired or moved it."""
        self.fired.append(timer)

    def cancel_timer(self, timer_id: str) -> None:
        self.cancelled.append(timer_id)

    def __bool__(self) -> bool:
        return bool(
            self.ops or self.events or self.idempotency or self.processed or self.timers
            or self.fired or self.cancelled
        )


Order = Sequence[str]  # field names, "-" prefix for descending; ties broken by _id


class DocumentStore(abc.ABC):
    """One service's database. Reads see every committed unit of work."""

    schema: Schema
    engine: Literal["sqlite", "mongodb"]

    # -- reads --
    @abc.abstractmethod
    async def get(self, collection: str, key: Key) -> Doc | None: ...

    @abc.abstractmethod
    async def get_many(self, collection: str, keys: Sequence[Key]) -> list[Doc]:
        """The documents that exist, in the order of `keys`."""

    async def may_exist(self, collection: str, key: Key) -> bool:
        """False only when `collection` holds no document `key` as of now, as a read
        would find: a hint that spares the read of a key that was never written (the
        counters of a member who never joined a group). True means "read it". The
        SQLite engine keeps a filter of the keys of a collection declared with
        `key_filter` (its `get` consults it too); the others always answer True."""
        return True

    @abc.abstractmethod
    async def find(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order: Order = ("_id",),
        limit: int | None = None,
    ) -> list[Doc]: ...

    @abc.abstractmethod
    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int: ...

    @abc.abstractmethod
    def scan(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        batch: int = 1000,
        partition: tuple[int, int] | None = None,
        fields: Sequence[str] | None = None,
    ) -> AsyncIterator[list[Doc]]:
        """Every matching document in ascending `_id`, in batches (keyset paging, so
        writes between batches are fine). `partition=(i, n)` on an int-keyed collection
        takes the keys with key % n == i. `fields` limits what each document carries
        (plus `_id`)."""

    @abc.abstractmethod
    async def next_ids(self, sequence: str, count: int = 1) -> list[int]:
        """The next `count` numbers of a declared sequence (1, 2, ...), outside any
        unit of work: a refused commit leaves a gap."""

    # -- the one way to write --
    @abc.abstractmethod
    async def commit(self, uow: UnitOfWork) -> None:
        """All of `uow` or nothing (Conflict, DuplicateKey). On success every written
        document's `_v` is updated in place to its stored version."""

    # -- the runtime's records (idempotency, events, timers) --
    @abc.abstractmethod
    async def recall(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    @abc.abstractmethod
    async def is_processed(self, consumer: str, event_id: str) -> bool: ...

    @abc.abstractmethod
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        """Unpublished events, oldest first, as (sequence, envelope)."""

    @abc.abstractmethod
    async def outbox_mark_published(self, seqs: Sequence[int]) -> None: ...

    @abc.abstractmethod
    async def due_timers(self, now: int, limit: int) -> list[Timer]:
        """Timers with due_at <= now, soonest first."""

    @abc.abstractmethod
    async def prune(self, now: int, processed_before: int) -> int:
        """Deletes expired idempotency records and event marks made before
        `processed_before`; returns how many."""

    @abc.abstractmethod
    async def close(self) -> None: ...


async def open_document_store(
    schema: Schema,
    *,
    sqlite_path: str = "",
    mongodb_uri: str = "",
    mongodb_db: str = "pond",
    mongo_database: Any = None,
) -> DocumentStore:
    """MongoDB when a URI (or a database object, for tests) is given, else SQLite.
    Collections, indexes and the runtime's tables are created idempotently.

    Database per service: on a URI the database is `<mongodb_db>_<schema.service>`
    (POND_MONGODB_DB, default "pond": `pond_member`, `pond_tagging`), so services never
    share collections even when they share settings. `mongo_database` is used as given."""
    if mongo_database is not None or mongodb_uri:
        from services.runtime.documents_mongo import MongoDocumentStore

        return await MongoDocumentStore.open(
            schema,
            uri=mongodb_uri,
            db_name=f"{mongodb_db}_{schema.service}",
            database=mongo_database,
        )
    from services.runtime.documents_sqlite import SqliteDocumentStore

    return await SqliteDocumentStore.open(schema, sqlite_path)
