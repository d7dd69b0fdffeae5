"""The document store on MongoDB through motor: production. The only module with motor
and pymongo calls for documents (a move to PyMongo's AsyncMongoClient is this file).

Database per service. open_document_store puts a service in the database
`<POND_MONGODB_DB>_<service>` (default `pond_member`, `pond_tagging`), so two services
never share a collection, even when one process (or one env) runs several. Within it:
one collection per declared collection, documents as given plus `_v`, the blob field as
BSON binary; the runtime's records in collections prefixed `_`: `_outbox` (`_id` = its
sequence number, event), `_idempotency` and `_processed` (`_id` = the two parts of the
key joined by \\x1f), `_timers` (`_id` = timer id, `_v` its version) and `_counters`
(`_id` = sequence name, `n` = the last number handed out; `_outbox` draws from it too).
Indexes are named `pond_<digest of their definition>`; open() creates the declared ones
and drops ours that are no longer declared, idempotently (partial ones through
`partialFilterExpression`).

What the server can do is asked once, with `hello`: multi-document transactions on a
replica-set member or a mongos; the full query language (mongomock implements neither
`hello` nor `$mod`, and its bulk_write differs from pymongo's, so there `scan`'s
partition is filtered here and put_many writes one document at a time).

Atomicity. With transactions (production) a unit of work is one transaction, committed
with `w: majority` (ClientSession.with_transaction: a transient error, such as a write
conflict with a concurrent transaction, reruns the whole unit, whose guards are checked
again, so a lost race is Conflict). Without them (mongomock in the contract suite, a
standalone mongod) the same writes run in the same order, each returning what it
replaced, and a refused write undoes the ones before it in reverse: all or nothing
against the unit's own refusals (Conflict, DuplicateKey), but not against a crash
midway or a reader looking in between. A unit of work is one transaction: keep a
put_many to thousands of documents, not millions.

Outbox numbers and sequences come from `_counters` with one `$inc`, outside the
transaction (so concurrent commits do not conflict on a counter, and a rerun keeps its
numbers): a refused commit leaves a gap, and a later number may commit first.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import orjson
from pymongo import ASCENDING, DESCENDING, InsertOne, ReplaceOne, ReturnDocument, WriteConcern
from pymongo.errors import BulkWriteError, CollectionInvalid, DuplicateKeyError, PyMongoError

from services.runtime.documents import (
    IDEMPOTENCY,
    PROCESSED,
    TIMERS,
    Conflict,
    Doc,
    DocumentStore,
    DuplicateKey,
    IdempotencyRecord,
    Key,
    Order,
    Schema,
    Timer,
    UnitOfWork,
    timer_version,
)
from services.runtime.documents_query import (
    DocumentRules,
    Term,
    check_limit,
    check_schema,
    check_unit,
    index_fields,
    matches,
    parse_order,
    parse_where,
)

_RUNTIME = ("_outbox", "_idempotency", "_processed", "_timers", "_counters")
_RUNTIME_INDEXES = {
    "_idempotency": [("expires_at", ASCENDING)],
    "_processed": [("at", ASCENDING)],
    "_timers": [("due_at", ASCENDING), ("_id", ASCENDING)],
}
_PUT_RETRIES = 10  # without transactions, a put that keeps losing races gives up
Undo = list[Callable[[], Awaitable[Any]]] | None  # None inside a transaction


def open_database(uri: str, name: str) -> Any:
    """A motor database on `uri`, majority writes (close with `.client.close()`)."""
    from motor.motor_asyncio import AsyncIOMotorClient

    client: Any = AsyncIOMotorClient(uri, tz_aware=True, uuidRepresentation="standard")
    return client.get_database(name, write_concern=WriteConcern(w="majority"))


async def _server_info(db: Any) -> tuple[bool, bool]:
    """(transactions, full query language); the module docstring explains both."""
    try:
        hello = await db.command("hello")
    except NotImplementedError:
        return False, False
    return "setName" in hello or hello.get("msg") == "isdbgrid", True


def _filter(terms: Sequence[Term]) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for t in terms:
        if t.op == "$eq":
            query[t.field] = t.value
        else:
            value = list(t.value) if isinstance(t.value, tuple) else t.value
            query.setdefault(t.field, {})[t.op] = value
    return query


def _joined(a: str, b: str) -> str:
    return f"{a}\x1f{b}"


class MongoDocumentStore(DocumentStore):
    engine: Literal["sqlite", "mongodb"] = "mongodb"

    def __init__(self, schema: Schema, db: Any, *, transactions: bool, full: bool,
                 owns_client: bool) -> None:
        self.schema = schema
        self._db = db
        self._c = {name: db[name] for name in [c.name for c in schema.collections] + list(_RUNTIME)}
        self._rules = {c.name: DocumentRules.of(c) for c in schema.collections}
        self._transactions = transactions
        self._full = full
        self._owns_client = owns_client
        self._sequences = frozenset(schema.sequences)

    @classmethod
    async def open(cls, schema: Schema, *, uri: str = "", db_name: str = "",
                   database: Any = None) -> MongoDocumentStore:
        """`database` is used as given and left open by close(); without it a client is
        opened on `uri` (database `db_name`) and closed by close()."""
        check_schema(schema)
        owns_client = database is None
        db = open_database(uri, db_name) if owns_client else database
        try:
            transactions, full = await _server_info(db)
            store = cls(schema, db, transactions=transactions, full=full,
                        owns_client=owns_client)
            await store._create()
        except BaseException:
            if owns_client:
                db.client.close()
            raise
        return store

    async def _create(self) -> None:
        existing = set(await self._db.list_collection_names())
        for name in self._c:
            if name not in existing:
                with contextlib.suppress(CollectionInvalid):  # a concurrent open made it
                    await self._db.create_collection(name)
        for name, keys in _RUNTIME_INDEXES.items():
            await self._c[name].create_index(keys)
        for c in self.schema.collections:
            coll = self._c[c.name]
            declared = {}
            for index in c.indexes:
                keys = [(f.lstrip("-"), DESCENDING if f.startswith("-") else ASCENDING)
                        for f in index.fields]
                options: dict[str, Any] = {"unique": index.unique}
                if index.partial:
                    options["partialFilterExpression"] = _filter(parse_where(c, index.partial))
                digest = hashlib.sha1(orjson.dumps([keys, options], option=orjson.OPT_SORT_KEYS))
                declared[f"pond_{digest.hexdigest()[:12]}"] = (keys, options)
            for name in await coll.index_information():
                if name.startswith("pond_") and name not in declared:
                    await coll.drop_index(name)
            for name, (keys, options) in declared.items():
                try:
                    await coll.create_index(keys, name=name, **options)
                except DuplicateKeyError as exc:
                    raise ValueError(
                        f"{c.name}: cannot create the unique index on {keys}:"
                        f" stored documents repeat its values ({exc})"
                    ) from exc

    async def close(self) -> None:
        if self._owns_client:
            self._db.client.close()

    # -- reads --
    async def get(self, collection: str, key: Key) -> Doc | None:
        doc: Doc | None = await self._c[collection].find_one({"_id": key})
        return doc

    async def get_many(self, collection: str, keys: Sequence[Key]) -> list[Doc]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return []
        docs = await self._c[collection].find({"_id": {"$in": unique}}).to_list(None)
        found = {d["_id"]: d for d in docs}
        return [found[k] for k in unique if k in found]

    async def find(self, collection: str, where: Mapping[str, Any] | None = None, *,
                   order: Order = ("_id",), limit: int | None = None) -> list[Doc]:
        c = self.schema.collection(collection)
        query = _filter(parse_where(c, where))
        sort = [(f, DESCENDING if desc else ASCENDING) for f, desc in parse_order(c, order)]
        check_limit(limit)
        if limit == 0:
            return []
        cursor = self._c[collection].find(query).sort(sort)
        if limit is not None:
            cursor = cursor.limit(limit)
        docs: list[Doc] = await cursor.to_list(None)
        return docs

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        query = _filter(parse_where(self.schema.collection(collection), where))
        return int(await self._c[collection].count_documents(query))

    async def scan(self, collection: str, where: Mapping[str, Any] | None = None, *,
                   batch: int = 1000, partition: tuple[int, int] | None = None,
                   fields: Sequence[str] | None = None) -> AsyncIterator[list[Doc]]:
        c = self.schema.collection(collection)
        base = _filter(parse_where(c, where))
        if batch < 1:
            raise ValueError("batch is at least 1")
        keep: Callable[[Any], bool] | None = None
        if partition is not None:
            index, parts = partition
            if c.key_type is not int or not 0 <= index < parts:
                raise ValueError(f"{c.name}: partition (i, n) with 0 <= i < n, on int keys")
            if self._full:
                base = {"$and": [base, {"_id": {"$mod": [parts, index]}}]}
            else:  # mongomock: the remainder's sign follows the key's, as $mod's does
                keep = lambda k: (abs(k) % parts) * (1 if k >= 0 else -1) == index  # noqa: E731
        projection = None if fields is None else {f: 1 for f in fields}
        query, last = base, None
        while True:
            if last is not None:
                query = {"$and": [base, {"_id": {"$gt": last}}]}
            rows = await (self._c[collection].find(query, projection)
                          .sort([("_id", ASCENDING)]).limit(batch).to_list(None))
            if not rows:
                return
            docs = rows if keep is None else [d for d in rows if keep(d["_id"])]
            if docs:
                yield docs
            if len(rows) < batch:
                return
            last = rows[-1]["_id"]

    async def next_ids(self, sequence: str, count: int = 1) -> list[int]:
        if sequence not in self._sequences:
            raise ValueError(f"{self.schema.service} declares no sequence {sequence!r}")
        return await self._draw(sequence, count)

    async def _draw(self, name: str, count: int) -> list[int]:
        if count < 0:
            raise ValueError("count is at least 0")
        if count == 0:
            return []
        doc = await self._c["_counters"].find_one_and_update(
            {"_id": name}, {"$inc": {"n": count}}, upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        top = int(doc["n"])
        return list(range(top - count + 1, top + 1))

    # -- writes --
    async def commit(self, uow: UnitOfWork) -> None:
        if not uow:
            return
        check_unit(self._rules, uow)
        seqs = await self._draw("_outbox", len(uow.events))
        if self._transactions:
            async with await self._db.client.start_session() as session:
                versions = await session.with_transaction(
                    lambda s: self._write(uow, seqs, s, None),
                    write_concern=WriteConcern(w="majority"),
                )
        else:
            undo: list[Callable[[], Awaitable[Any]]] = []
            try:
                versions = await self._write(uow, seqs, None, undo)
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(PyMongoError):
                        await step()
                raise
        for (op, _, arg), version in zip(uow.ops, versions, strict=True):
            if op == "put_many":
                for doc, v in zip(arg, version, strict=True):
                    doc["_v"] = v
            elif version is not None:
                arg["_v"] = version

    def _body(self, collection: str, doc: Doc, version: int) -> Doc:
        body = {**doc, "_v": version}
        blob = self._rules[collection].collection.blob
        if blob is not None and body.get(blob) is None:
            body.pop(blob, None)
        return body

    async def _write(self, uow: UnitOfWork, seqs: list[int], s: Any, undo: Undo) -> list[Any]:
        """The unit of work in order (the module docstring says how it is atomic)."""
        def later(step: Callable[[], Awaitable[Any]]) -> None:
            if undo is not None:
                undo.append(step)

        versions: list[Any] = []
        for op, collection, arg in uow.ops:
            coll = self._c[collection]
            if op == "insert":
                try:
                    await coll.insert_one(self._body(collection, arg, 1), session=s)
                except DuplicateKeyError as exc:
                    raise await self._duplicate(collection, arg, exc, inserting=True) from exc
                later(partial(coll.delete_one, {"_id": arg["_id"]}))
                versions.append(1)
            elif op == "replace":
                v = arg["_v"]
                try:
                    before = await coll.find_one_and_replace(
                        {"_id": arg["_id"], "_v": v}, self._body(collection, arg, v + 1),
                        session=s,
                    )
                except DuplicateKeyError as exc:
                    raise await self._duplicate(collection, arg, exc) from exc
                if before is None:
                    raise Conflict(collection, arg["_id"])
                later(partial(coll.replace_one, {"_id": before["_id"]}, before))
                versions.append(v + 1)
            elif op == "delete":
                key, v = arg
                guard = {"_id": key} if v is None else {"_id": key, "_v": v}
                before = await coll.find_one_and_delete(guard, session=s)
                if before is None and v is not None:
                    raise Conflict(collection, key)
                if before is not None:
                    later(partial(coll.insert_one, before))
                versions.append(None)
            elif op == "put" or op == "put_many":
                docs = arg if op == "put_many" else [arg]
                if self._transactions and self._full and len(docs) > 1:
                    done = await self._put_bulk(collection, docs, s)
                else:
                    done = [await self._put(collection, d, s, later) for d in docs]
                versions.append(done if op == "put_many" else done[0])
            else:
                raise ValueError(f"unknown operation {op!r}")
        await self._write_records(uow, seqs, s, later)
        return versions

    async def _put(self, collection: str, doc: Doc, s: Any,
                   later: Callable[[Callable[[], Awaitable[Any]]], None]) -> int:
        """Insert or replace one document, its version one past the stored one."""
        coll, key = self._c[collection], doc["_id"]
        for _ in range(_PUT_RETRIES):
            before = await coll.find_one({"_id": key}, session=s)
            try:
                if before is None:
                    await coll.insert_one(self._body(collection, doc, 1), session=s)
                    later(partial(coll.delete_one, {"_id": key}))
                    return 1
                v = before["_v"] + 1
                if await coll.find_one_and_replace(
                    {"_id": key, "_v": before["_v"]}, self._body(collection, doc, v), session=s
                ) is not None:
                    later(partial(coll.replace_one, {"_id": key}, before))
                    return int(v)
            except DuplicateKeyError as exc:
                # Without a transaction, another writer may have inserted the key first
                # (read again); in one, the error has aborted it: no more reads.
                if s is not None or before is not None or await coll.find_one({"_id": key}) is None:
                    raise await self._duplicate(collection, doc, exc) from exc
        raise Conflict(collection, key)

    async def _put_bulk(self, collection: str, docs: Sequence[Doc], s: Any) -> list[int]:
        """put_many inside a transaction on a real server: one read, one bulk write (a
        concurrent writer makes it a write conflict, and the transaction reruns)."""
        coll = self._c[collection]
        keys = list(dict.fromkeys(d["_id"] for d in docs))
        current = {d["_id"]: d["_v"] for d in await coll.find(
            {"_id": {"$in": keys}}, {"_v": 1}, session=s).to_list(None)}
        requests: list[Any] = []
        versions = []
        for doc in docs:
            key, v = doc["_id"], current.get(doc["_id"])
            if v is None:
                requests.append(InsertOne(self._body(collection, doc, 1)))
            else:
                requests.append(ReplaceOne({"_id": key, "_v": v},
                                           self._body(collection, doc, v + 1)))
            current[key] = (v or 0) + 1
            versions.append(current[key])
        try:
            await coll.bulk_write(requests, ordered=True, session=s)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or [{}]
            if errors[0].get("code") == 11000:
                doc = docs[errors[0]["index"]]
                raise DuplicateKey(collection, doc["_id"], self._index_of(
                    collection, errors[0].get("keyPattern"))) from exc
            raise
        return versions

    def _index_of(self, collection: str, pattern: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The declared fields of the index a duplicate-key error's keyPattern names."""
        return index_fields(self.schema.collection(collection), tuple(pattern or ("_id",)))

    async def _duplicate(self, collection: str, doc: Doc, exc: DuplicateKeyError, *,
                         inserting: bool = False) -> DuplicateKey:
        """DuplicateKey naming the index: from the server's keyPattern, or (mongomock,
        whose keyPattern, made up by mongomock-motor, ignores `_id` and partial filters)
        by looking for the document that holds the values."""
        coll, rules = self._c[collection], self._rules[collection]
        if inserting and await coll.find_one({"_id": doc["_id"]}, {"_id": 1}) is not None:
            return DuplicateKey(collection, doc["_id"])  # `_id` first, as on SQLite
        pattern = (exc.details or {}).get("keyPattern")
        if pattern and self._full:
            return DuplicateKey(collection, doc["_id"], self._index_of(collection, pattern))
        for index in rules.collection.indexes:
            if not index.unique:
                continue
            partial = parse_where(rules.collection, index.partial) if index.partial else ()
            if not matches(doc, partial):
                continue
            values = {f.lstrip("-"): doc.get(f.lstrip("-")) for f in index.fields}
            query = {"$and": [values, _filter(partial), {"_id": {"$ne": doc["_id"]}}]}
            if await coll.find_one(query, {"_id": 1}) is not None:
                return DuplicateKey(collection, doc["_id"], index.fields)
        return DuplicateKey(collection, doc["_id"])

    async def _write_records(self, uow: UnitOfWork, seqs: list[int], s: Any,
                             later: Callable[[Callable[[], Awaitable[Any]]], None]) -> None:
        timers = self._c["_timers"]
        for timer in uow.fired:
            before = await timers.find_one_and_delete(
                {"_id": timer.id, "_v": timer.version}, session=s)
            if before is None:
                raise Conflict(TIMERS, timer.id)
            later(partial(timers.insert_one, before))
        for timer_id in uow.cancelled:
            before = await timers.find_one_and_delete({"_id": timer_id}, session=s)
            if before is not None:
                later(partial(timers.insert_one, before))
        for timer in uow.timers:
            body = {"_id": timer.id, "kind": timer.kind, "due_at": timer.due_at,
                    "payload": dict(timer.payload), "_v": timer_version()}
            before = await timers.find_one_and_replace(
                {"_id": timer.id}, body, upsert=True, session=s)
            if before is None:
                later(partial(timers.delete_one, {"_id": timer.id}))
            else:
                later(partial(timers.replace_one, {"_id": timer.id}, before))
        if (rec := uow.idempotency) is not None:
            key = _joined(rec.scope, rec.key)
            try:
                await self._c["_idempotency"].insert_one(
                    {"_id": key, "scope": rec.scope, "key": rec.key,
                     "fingerprint": rec.fingerprint, "response": rec.response,
                     "expires_at": rec.expires_at}, session=s)
            except DuplicateKeyError as exc:
                raise DuplicateKey(IDEMPOTENCY, rec.key, ("scope", "key")) from exc
            later(partial(self._c["_idempotency"].delete_one, {"_id": key}))
        for consumer, event_id, at in uow.processed:
            mark = _joined(consumer, event_id)
            try:
                await self._c["_processed"].insert_one(
                    {"_id": mark, "consumer": consumer, "event_id": event_id, "at": at},
                    session=s)
            except DuplicateKeyError as exc:
                raise DuplicateKey(PROCESSED, event_id, ("consumer", "event_id")) from exc
            later(partial(self._c["_processed"].delete_one, {"_id": mark}))
        if uow.events:
            await self._c["_outbox"].insert_many(
                [{"_id": seq, "event": e} for seq, e in zip(seqs, uow.events, strict=True)],
                session=s)
            later(partial(self._c["_outbox"].delete_many, {"_id": {"$in": seqs}}))

    # -- the runtime's records --
    async def recall(self, scope: str, key: str) -> IdempotencyRecord | None:
        doc = await self._c["_idempotency"].find_one({"_id": _joined(scope, key)})
        if doc is None:
            return None
        return IdempotencyRecord(scope, key, doc["fingerprint"], bytes(doc["response"]),
                                 doc["expires_at"])

    async def is_processed(self, consumer: str, event_id: str) -> bool:
        mark = _joined(consumer, event_id)
        return await self._c["_processed"].find_one({"_id": mark}, {"_id": 1}) is not None

    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        if limit <= 0:  # MongoDB reads a limit of 0 as none
            return []
        docs = await (self._c["_outbox"].find({}).sort([("_id", ASCENDING)]).limit(limit)
                      .to_list(None))
        return [(int(d["_id"]), bytes(d["event"])) for d in docs]

    async def outbox_mark_published(self, seqs: Sequence[int]) -> None:
        if seqs:
            await self._c["_outbox"].delete_many({"_id": {"$in": list(seqs)}})

    async def due_timers(self, now: int, limit: int) -> list[Timer]:
        if limit <= 0:
            return []
        docs = await (self._c["_timers"].find({"due_at": {"$lte": now}})
                      .sort([("due_at", ASCENDING), ("_id", ASCENDING)]).limit(limit)
                      .to_list(None))
        return [Timer(id=d["_id"], kind=d["kind"], due_at=d["due_at"], payload=d["payload"],
                      version=d["_v"]) for d in docs]

    async def prune(self, now: int, processed_before: int) -> int:
        expired = await self._c["_idempotency"].delete_many({"expires_at": {"$lte": now}})
        marks = await self._c["_processed"].delete_many({"at": {"$lt": processed_before}})
        return int(expired.deleted_count + marks.deleted_count)
