"""The tagging store on MongoDB (motor): the production backend. Every motor and pymongo
call of the tagging service stays in this file; what every Mongo store shares (opening,
server detection, counters, the transaction wrapper, bulk upserts, find_docs) is
services.runtime.mongo.

Collections (created by open(), with every index a query needs, idempotently):
  member_index      `_id` = the dense index (0, 1, 2, ...), member_id (unique index)
  history           `_id` = idx, then the other ROW_COLUMNS by name (ints; the packed
                    arrays as BSON binary, read back as `bytes`)
  processed_events  `_id` = event id
  manual_tags       `_id` = idx + "\\x1f" + tag; idx, tag, by, at
  definitions       `_id` = kind + "\\x1f" + key; kind, key, doc
  versions          `_id` = kind + "\\x1f" + key + "\\x1f" + version; kind, key, version,
                    doc, bitmap
  bitmaps           `_id` = kind + "\\x1f" + name; kind, name, bitmap
  run_lock          one document, `_id` = "lock"; run_id, heartbeat
  runs              `_id` = run id, doc
  run_stats         `_id` = run id + "\\x1f" + partition; run_id, partition, blob
  categories        `_id` = the dense category id (0, 1, 2, ...), name (unique index)
  cycles            `_id` = category, days
  outbox            `_id` = sequence number (1, 2, ...), event bytes
  counters          `_id` = the sequence's name ("member_index", "categories", "outbox"),
                    `n` = how many numbers were handed out
Documents (definitions, runs) go through JSON on the way in, exactly as on SQLite, so
both backends accept and return the same values.

Size. A BSON document is limited to 16 MB: one bitmap, version or run-statistics blob
must stay below that. A Roaring bitmap of a million members is far smaller.

Dense ids (member index, categories) come from a counter: `$inc` by the number of new
names, then insert; a name inserted concurrently by another writer (DuplicateKeyError on
the unique index) is read back instead, and the id this writer drew for it stays unused:
only concurrent creators of the same name can leave a gap. open() raises each counter to
at least what its collection already holds, so a database restored without `counters`
carries on where it was. Outbox sequence numbers are drawn the same way, before a
transaction, so a retried transaction reuses them.

Atomicity. On a replica set or a mongos (production: ARCHITECTURE.md, "Storage and
messaging") apply_event, set_manual_tags and put_bitmaps each run in one multi-document
transaction (retried by the driver on transient errors), so they are all-or-nothing as
on SQLite. mongomock and a standalone mongod have no transactions: there the same writes
run in this order without a session:
  apply_event    the processed event id first (a replay is refused before anything else
                 is written), then the history row, then the outbox events; a crash in
                 between can lose the event's effects, never apply them twice;
  put_bitmaps    the bitmaps, then the outbox events;
  set_manual_tags  the additions, then the removals.
put_histories (imports, backfills) is a bulk write and atomic per row only, on every
server. The run lock is one document changed by a conditional find_one_and_update.

mongomock gaps designed around (both detected at open(); mongomock does not implement
the `hello` command): its bulk_write does not accept what pymongo 4.20 passes, so bulk
upserts there run one statement per document; and it has no `$mod` query operator, so
scan_histories filters partitions with the `$expr` form there and with
`{"_id": {"$mod": [partitions, partition]}}` (evaluated on the _id index) on MongoDB.
"""

from __future__ import annotations

import json
import operator
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.runtime.mongo import Counter, MongoSchema, MongoStore, find_docs
from services.tagging.domain.history import ROW_COLUMNS
from services.tagging.store import AlreadyExists, ManualTag, TaggingStore

_COLLECTIONS = (
    "member_index",
    "history",
    "processed_events",
    "manual_tags",
    "definitions",
    "versions",
    "bitmaps",
    "run_lock",
    "runs",
    "run_stats",
    "categories",
    "cycles",
    "outbox",
    "counters",
)

# collection -> [(keys, options)]
_INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict]]] = {
    "member_index": [([("member_id", ASCENDING)], {"unique": True})],
    "categories": [([("name", ASCENDING)], {"unique": True})],
    "manual_tags": [([("idx", ASCENDING), ("tag", ASCENDING)], {})],
    "definitions": [([("kind", ASCENDING), ("key", ASCENDING)], {})],
    "versions": [([("kind", ASCENDING), ("key", ASCENDING), ("version", DESCENDING)], {})],
    "bitmaps": [([("kind", ASCENDING)], {})],
    "run_stats": [([("run_id", ASCENDING)], {})],
}

_COUNTERS = {
    "member_index": Counter("member_index", first=0),
    "categories": Counter("categories", first=0),
    "outbox": Counter("outbox"),
}

_SEP = "\x1f"
_LOCK_ID = "lock"
_READ_CHUNK = 10_000  # names per $in query (a query document is limited to 16 MB too)
_HISTORY_FIELDS = ROW_COLUMNS[1:]  # ROW_COLUMNS[0], idx, is the _id
_HISTORY_PROJECTION = dict.fromkeys(_HISTORY_FIELDS, 1)


def _plain(doc: dict) -> dict:
    """The document as SQLite stores it (JSON), so both backends return the same."""
    return json.loads(json.dumps(doc, ensure_ascii=False))


def _cell_in(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return _blob(value)
    return operator.index(value)  # numpy integers too; a float is refused


def _cell_out(value: Any) -> Any:
    if isinstance(value, bytes):  # bson.Binary is a bytes subclass
        return bytes(value)
    if isinstance(value, int):  # bson.Int64 is an int subclass
        return int(value)
    return value


def _blob(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def _history_doc(row: tuple) -> dict:
    if len(row) != len(ROW_COLUMNS):
        raise ValueError(f"a history row has {len(ROW_COLUMNS)} columns, got {len(row)}")
    doc: dict[str, Any] = {"_id": operator.index(row[0])}
    for name, value in zip(_HISTORY_FIELDS, row[1:], strict=True):
        doc[name] = _cell_in(value)
    return doc


def _history_row(doc: dict) -> tuple:
    return (int(doc["_id"]), *(_cell_out(doc.get(name)) for name in _HISTORY_FIELDS))


def _manual_tag_id(idx: int, tag: str) -> str:
    return f"{idx}{_SEP}{tag}"


class MongoTaggingStore(MongoStore, TaggingStore):
    """open(), close(), the collections (`self._c.<name>`), counters, transactions and
    bulk upserts come from MongoStore."""

    SCHEMA = MongoSchema(_COLLECTIONS, _INDEXES, _COUNTERS, repair_counters=True)

    # -- helpers --
    async def _lookup(self, collection, field: str, names: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(names), _READ_CHUNK):
            chunk = names[start : start + _READ_CHUNK]
            async for doc in collection.find({field: {"$in": chunk}}):
                found[doc[field]] = int(doc["_id"])
        return found

    async def _get_or_create(self, counter: str, field: str, names: list[str]) -> dict[str, int]:
        """Dense ids for `names`, new ones in order of first appearance."""
        collection = self._db[_COUNTERS[counter].collection]
        wanted = list(dict.fromkeys(names))
        found = await self._lookup(collection, field, wanted)
        missing = [n for n in wanted if n not in found]
        while missing:
            ids = await self._next_ids(counter, len(missing))
            try:
                await collection.insert_many(
                    [{"_id": i, field: n} for i, n in zip(ids, missing, strict=True)], ordered=False
                )
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                # A concurrent writer inserted some of these names (read back below), or
                # took one of these ids, when the counter was behind its collection.
                await self._repair_counter(counter)
            found.update(await self._lookup(collection, field, missing))
            missing = [n for n in missing if n not in found]
        return {n: found[n] for n in wanted}

    # -- the dense member index --
    async def index_members(self, member_ids: list[str]) -> dict[str, int]:
        return await self._get_or_create("member_index", "member_id", member_ids)

    async def load_index(self) -> list[tuple[int, str]]:
        docs = await find_docs(self._c.member_index, {}, [("_id", ASCENDING)], -1)
        return [(int(d["_id"]), d["member_id"]) for d in docs]

    # -- member history rows --
    async def get_history(self, idx: int) -> tuple | None:
        doc = await self._c.history.find_one({"_id": idx}, _HISTORY_PROJECTION)
        return _history_row(doc) if doc else None

    async def apply_event(self, event_id: str, row: tuple | None, events: list[bytes]) -> bool:
        doc = _history_doc(row) if row is not None else None
        seqs = await self._next_ids("outbox", len(events))

        async def write(s) -> None:
            try:
                await self._c.processed_events.insert_one({"_id": event_id}, session=s)
            except DuplicateKeyError as exc:
                raise _AlreadyProcessed from exc
            if doc is not None:
                await self._c.history.replace_one({"_id": doc["_id"]}, doc, upsert=True, session=s)
            await self._queue(seqs, events, s)

        try:
            await self._atomically(write)
        except _AlreadyProcessed:
            return False
        return True

    async def _queue(self, seqs: list[int], events: list[bytes], s) -> None:
        if events:
            await self._c.outbox.insert_many(
                [{"_id": seq, "event": _blob(e)} for seq, e in zip(seqs, events, strict=True)],
                session=s,
            )

    async def put_histories(self, rows: list[tuple]) -> None:
        docs = [_history_doc(r) for r in rows]
        await self._upsert_many(
            self._c.history, [({"_id": d["_id"]}, d) for d in docs], replace=True, ordered=False
        )

    async def scan_histories(
        self, partition: int = 0, partitions: int = 1, batch: int = 50_000
    ) -> AsyncIterator[list[tuple]]:
        after = -1
        while True:
            if self._full_query_language:  # it has the $mod query operator
                query: dict = {"_id": {"$gt": after, "$mod": [partitions, partition]}}
            else:
                query = {
                    "_id": {"$gt": after},
                    "$expr": {"$eq": [{"$mod": ["$_id", partitions]}, partition]},
                }
            docs = await find_docs(
                self._c.history, query, [("_id", ASCENDING)], batch, _HISTORY_PROJECTION
            )
            if not docs:
                return
            yield [_history_row(d) for d in docs]
            after = int(docs[-1]["_id"])

    # -- manual tags --
    async def set_manual_tags(
        self, add: list[ManualTag], remove: list[tuple[int, str]], events: Sequence[bytes] = ()
    ) -> int:
        adds = [
            (
                {"_id": _manual_tag_id(t.idx, t.tag)},
                {"$setOnInsert": {"idx": t.idx, "tag": t.tag, "by": t.by, "at": t.at}},
            )
            for t in add
        ]
        removes = list(dict.fromkeys(_manual_tag_id(idx, tag) for idx, tag in remove))
        events = list(events)
        seqs = await self._next_ids("outbox", len(events))

        async def write(s) -> int:
            changed = await self._upsert_many(self._c.manual_tags, adds, replace=False, session=s)
            if removes:
                result = await self._c.manual_tags.delete_many({"_id": {"$in": removes}}, session=s)
                changed += result.deleted_count
            await self._queue(seqs, events, s)
            return changed

        return await self._atomically(write)

    async def load_manual_tags(self) -> list[ManualTag]:
        docs = await find_docs(
            self._c.manual_tags, {}, [("idx", ASCENDING), ("tag", ASCENDING)], -1
        )
        return [ManualTag(int(d["idx"]), d["tag"], d["by"], int(d["at"])) for d in docs]

    # -- definitions and versions --
    async def put_definition(self, kind: str, key: str, doc: dict, *, create: bool = False) -> None:
        stored = {"_id": f"{kind}{_SEP}{key}", "kind": kind, "key": key, "doc": _plain(doc)}
        if create:
            try:
                await self._c.definitions.insert_one(stored)
            except DuplicateKeyError as exc:
                raise AlreadyExists(key) from exc
        else:
            await self._c.definitions.replace_one({"_id": stored["_id"]}, stored, upsert=True)

    async def get_definition(self, kind: str, key: str) -> dict | None:
        doc = await self._c.definitions.find_one({"_id": f"{kind}{_SEP}{key}"})
        return doc["doc"] if doc else None

    async def list_definitions(self, kind: str) -> list[dict]:
        docs = await find_docs(self._c.definitions, {"kind": kind}, [("key", ASCENDING)], -1)
        return [d["doc"] for d in docs]

    async def add_version(
        self, kind: str, key: str, version: int, doc: dict, bitmap: bytes = b""
    ) -> None:
        doc_id = f"{kind}{_SEP}{key}{_SEP}{version}"
        await self._c.versions.replace_one(
            {"_id": doc_id},
            {
                "_id": doc_id,
                "kind": kind,
                "key": key,
                "version": version,
                "doc": _plain(doc),
                "bitmap": _blob(bitmap),
            },
            upsert=True,
        )

    async def list_versions(self, kind: str, key: str) -> list[tuple[dict, bytes]]:
        docs = await find_docs(
            self._c.versions, {"kind": kind, "key": key}, [("version", DESCENDING)], -1
        )
        return [(d["doc"], bytes(d["bitmap"])) for d in docs]

    # -- bitmaps --
    async def put_bitmaps(
        self,
        kind: str,
        bitmaps: dict[str, bytes],
        events: Sequence[bytes] = (),
        *,
        delete: Sequence[str] = (),
    ) -> None:
        ops = []
        for name, blob in bitmaps.items():
            doc_id = f"{kind}{_SEP}{name}"
            ops.append(
                (
                    {"_id": doc_id},
                    {"_id": doc_id, "kind": kind, "name": name, "bitmap": _blob(blob)},
                )
            )
        events = list(events)
        seqs = await self._next_ids("outbox", len(events))

        gone = [f"{kind}{_SEP}{name}" for name in delete]

        async def write(s) -> None:
            await self._upsert_many(self._c.bitmaps, ops, replace=True, session=s)
            if gone:
                await self._c.bitmaps.delete_many({"_id": {"$in": gone}}, session=s)
            await self._queue(seqs, events, s)

        await self._atomically(write)

    async def load_bitmaps(self, kind: str) -> dict[str, bytes]:
        return {
            d["name"]: bytes(d["bitmap"])
            async for d in self._c.bitmaps.find({"kind": kind}, {"name": 1, "bitmap": 1})
        }

    # -- scoring runs --
    async def acquire_run_lock(self, run_id: str, now: int, stale_after: int) -> str:
        takeable = {"$or": [{"run_id": run_id}, {"heartbeat": {"$lt": now - stale_after}}]}
        for _ in range(10):
            try:
                # Matches a lock we may take; inserts one when there is none. A lock held
                # by another fresh run makes the insert collide with it.
                await self._c.run_lock.find_one_and_update(
                    {"_id": _LOCK_ID, **takeable},
                    {"$set": {"run_id": run_id, "heartbeat": now}},
                    upsert=True,
                )
                return run_id
            except DuplicateKeyError:
                held = await self._c.run_lock.find_one({"_id": _LOCK_ID})
            if held is not None and not (
                held["run_id"] == run_id or held["heartbeat"] < now - stale_after
            ):
                return held["run_id"]
            # Released or gone stale in between: try again.
        raise RuntimeError("the run lock keeps changing hands")

    async def refresh_run_lock(self, run_id: str, now: int) -> None:
        await self._c.run_lock.update_one(
            {"_id": _LOCK_ID, "run_id": run_id}, {"$set": {"heartbeat": now}}
        )

    async def release_run_lock(self, run_id: str) -> None:
        await self._c.run_lock.delete_one({"_id": _LOCK_ID, "run_id": run_id})

    async def put_run(self, run_id: str, doc: dict, *, expect: dict | None = None) -> bool:
        stored = {"_id": run_id, "doc": _plain(doc)}
        if not expect:
            await self._c.runs.replace_one({"_id": run_id}, stored, upsert=True)
            return True
        query = {"_id": run_id, **{f"doc.{k}": v for k, v in expect.items()}}
        result = await self._c.runs.replace_one(query, stored)
        return result.matched_count == 1

    async def get_run(self, run_id: str) -> dict | None:
        doc = await self._c.runs.find_one({"_id": run_id})
        return doc["doc"] if doc else None

    async def list_runs(self, before_id: str, limit: int) -> list[dict]:
        query = {"_id": {"$lt": before_id}} if before_id else {}
        docs = await find_docs(self._c.runs, query, [("_id", DESCENDING)], limit)
        return [d["doc"] for d in docs]

    async def put_run_stats(self, run_id: str, partition: int, blob: bytes) -> None:
        doc_id = f"{run_id}{_SEP}{partition}"
        await self._c.run_stats.replace_one(
            {"_id": doc_id},
            {"_id": doc_id, "run_id": run_id, "partition": partition, "blob": _blob(blob)},
            upsert=True,
        )

    async def load_run_stats(self, run_id: str) -> dict[int, bytes]:
        return {
            int(d["partition"]): bytes(d["blob"])
            async for d in self._c.run_stats.find({"run_id": run_id})
        }

    async def clear_run_stats(self) -> None:
        await self._c.run_stats.delete_many({})

    # -- categories --
    async def category_ids(self, names: list[str]) -> dict[str, int]:
        return await self._get_or_create("categories", "name", names)

    async def load_categories(self) -> dict[str, int]:
        return {d["name"]: int(d["_id"]) async for d in self._c.categories.find({})}

    async def set_cycle(self, category: str, days: float) -> None:
        if days > 0:
            await self._c.cycles.replace_one(
                {"_id": category}, {"_id": category, "days": float(days)}, upsert=True
            )
        else:
            await self._c.cycles.delete_one({"_id": category})

    async def load_cycles(self) -> dict[str, float]:
        return {d["_id"]: float(d["days"]) async for d in self._c.cycles.find({})}

    # -- outbox --
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        docs = await find_docs(self._c.outbox, {}, [("_id", ASCENDING)], limit)
        return [(int(d["_id"]), bytes(d["event"])) for d in docs]

    async def outbox_mark_published(self, seqs: list[int]) -> None:
        if seqs:
            await self._c.outbox.delete_many({"_id": {"$in": list(seqs)}})


class _AlreadyProcessed(Exception):
    """apply_event's refusal, raised out of the transaction so that it is aborted."""
