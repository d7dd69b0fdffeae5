"""The tagging store: tagging's collections and queries, written once against the
runtime's document store (services.runtime.documents: SQLite embedded, MongoDB in
production), held to one contract over both by tests/contract/test_tagging_store.py.

What the in-memory engine rebuilds itself from (see SCHEMA):
  members, categories  int keys drawn from a sequence (0, 1, 2, ...): the dense member
                 index and category ids; the name is unique. A name inserted meanwhile
                 by another writer is read back; the number drawn for it stays unused.
  history        by member index: the history row packed into one blob
                 (services.tagging.domain.packed), so a run reads one value a member
  manual_tags    "<idx>:<tag>"; tags, segments, tag_versions, segment_versions (with
                 the members as a bitmap blob); bitmaps "<kind>:<name>" (tag, segment,
                 since-cohort bitmaps); cycles; state (learned cycles, untracked
                 categories)
  merges         by merged member id: the member it was merged into
  runs           by run id (ids sort by time), written guarded by their version;
                 run_lock, one document taken, refreshed and released guarded;
                 run_stats "<exchange>#<partition>", what partitions exchange (blob)
Applied member events are the runtime's processed marks, committed by its event
handlers (services/tagging/members.py) with the history; the outbox is the runtime's.
What belongs together (a history, its event mark and its TagsChanged events; bitmaps
and their events) is one unit of work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

from services.runtime.documents import (
    Collection,
    Conflict,
    DocumentStore,
    DuplicateKey,
    Index,
    Schema,
    UnitOfWork,
    open_document_store,
)
from services.tagging.domain.definitions import (
    ManualTag,
    SegmentDefinition,
    SegmentVersion,
    TagDefinition,
    TagVersion,
)
from services.tagging.domain.history import MemberHistory
from services.tagging.domain.packed import pack_row, unpack_row
from services.tagging.domain.scoring_runs import Run

SQLITE_FILE = "tagging.sqlite"  # under the data directory
SCHEMA = Schema(
    "tagging",
    (
        Collection("members", (Index(("member_id",), unique=True),), key_type=int),
        Collection("history", key_type=int, blob="row"),
        Collection("manual_tags", (Index(("idx", "tag")),)),
        Collection("tags"),
        Collection("segments"),
        Collection("tag_versions", (Index(("tag", "-version")),)),
        Collection("segment_versions", (Index(("segment", "-version")),), blob="bitmap"),
        Collection("bitmaps", (Index(("kind",)),), blob="bitmap"),
        Collection("runs"),
        Collection("run_lock"),
        Collection("run_stats", (Index(("exchange",)),), fields=("partition",), blob="blob"),
        Collection("categories", (Index(("name",), unique=True),), key_type=int),
        Collection("cycles"),
        Collection("state"),
        Collection("merges"),
    ),
    sequences=("members", "categories"),
)
_LOCK = "scoring"
_LOOKUP_CHUNK = 500  # names per $in query
_RETRIES = 10  # of a write that lost a race, before giving up
R = TypeVar("R")


class AlreadyExists(Exception):
    pass


_NOT_STORED = frozenset({"expr", "revision"})  # parsed expressions; a run's stored version


def _doc(key: str | int, record: Any, **extra: Any) -> dict:
    """A typed record as a document."""
    doc = {f.name: getattr(record, f.name) for f in fields(record) if f.name not in _NOT_STORED}
    return {"_id": key, **doc, **extra}


def _record(cls: type[R], doc: Mapping[str, Any]) -> R:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in doc.items() if k in names})


class TaggingStore:
    """`docs` is the document store underneath: its outbox is tagging's."""

    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs

    async def close(self) -> None:
        await self.docs.close()

    async def _put(self, collection: str, doc: dict) -> None:
        uow = UnitOfWork()
        uow.put(collection, doc)
        await self.docs.commit(uow)

    # -- dense ids: the member index and categories --
    async def _lookup(self, collection: str, field: str, names: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(names), _LOOKUP_CHUNK):
            chunk = names[start : start + _LOOKUP_CHUNK]
            for d in await self.docs.find(collection, {field: {"$in": chunk}}, limit=len(chunk)):
                found[d[field]] = d["_id"]
        return found

    async def _dense_ids(self, collection: str, field: str, names: Iterable[str]) -> dict[str, int]:
        """Get-or-create an id (0, 1, 2, ...) per name, new ones in order of first
        appearance."""
        wanted = list(dict.fromkeys(names))
        found = await self._lookup(collection, field, wanted)
        for _ in range(_RETRIES):
            missing = [n for n in wanted if n not in found]
            if not missing:
                return {n: found[n] for n in wanted}
            numbers = await self.docs.next_ids(collection, len(missing))
            uow = UnitOfWork()
            for i, n in zip(numbers, missing, strict=True):  # inserts: never over an id
                uow.insert(collection, {"_id": i - 1, field: n})
            try:
                await self.docs.commit(uow)
                found.update((n, i - 1) for i, n in zip(numbers, missing, strict=True))
            except DuplicateKey:  # another writer added some of these names: read them
                found.update(await self._lookup(collection, field, missing))
        raise RuntimeError(f"{collection}: ids for {len(wanted)} names kept colliding")

    async def index_members(self, member_ids: Iterable[str]) -> dict[str, int]:
        """Get-or-create the dense index of each member id."""
        return await self._dense_ids("members", "member_id", member_ids)

    async def load_index(self) -> list[tuple[int, str]]:
        """(idx, member id), ascending."""
        out: list[tuple[int, str]] = []
        async for docs in self.docs.scan("members", batch=50_000, fields=("member_id",)):
            out.extend((d["_id"], d["member_id"]) for d in docs)
        return out

    async def category_ids(self, names: Iterable[str]) -> dict[str, int]:
        return await self._dense_ids("categories", "name", names)

    async def load_categories(self) -> dict[str, int]:
        return {d["name"]: d["_id"] for d in await self.docs.find("categories")}

    # -- member histories --
    async def get_history(self, idx: int) -> MemberHistory | None:
        doc = await self.docs.get("history", idx)
        return MemberHistory.from_row(unpack_row(idx, doc["row"])) if doc else None

    def add_history(self, uow: UnitOfWork, history: MemberHistory) -> None:
        """Adds the replacement of the member's history row to `uow` (an event
        handler's, committed with the event's processed mark)."""
        uow.put("history", {"_id": history.idx, "row": pack_row(history.to_row())})

    async def put_histories(self, rows: Iterable[tuple]) -> None:
        """Bulk replace history rows (ROW_COLUMNS: imports, backfills, benchmarks)."""
        uow = UnitOfWork()
        uow.put_many("history", [{"_id": int(r[0]), "row": pack_row(r)} for r in rows])
        await self.docs.commit(uow)

    async def scan_histories(
        self, partition: int = 0, partitions: int = 1, batch: int = 50_000
    ) -> AsyncIterator[tuple[np.ndarray, list[bytes]]]:
        """Packed rows of the members with idx % partitions == partition, ascending
        idx, in batches: (idx, blobs)."""
        part = (partition, partitions) if partitions > 1 else None
        async for docs in self.docs.scan("history", batch=batch, partition=part):
            idx = np.fromiter((d["_id"] for d in docs), dtype=np.int64, count=len(docs))
            yield idx, [d["row"] for d in docs]

    # -- merges (MembersMerged) --
    def add_merge(self, uow: UnitOfWork, merged_id: str, surviving_id: str, idx: int) -> None:
        """Records the merge and drops the merged member's history (runs score it no
        more), in the event handler's unit of work."""
        uow.put("merges", {"_id": merged_id, "into": surviving_id})
        uow.delete("history", idx)

    def move_manual_tags(
        self, uow: UnitOfWork, add: Sequence[ManualTag], remove: Sequence[tuple[int, str]]
    ) -> None:
        for t in add:
            uow.put("manual_tags", _doc(f"{t.idx}:{t.tag}", t))
        for idx, tag in remove:
            uow.delete("manual_tags", f"{idx}:{tag}")

    async def load_merges(self) -> dict[str, str]:
        return {d["_id"]: d["into"] for d in await self.docs.find("merges")}

    # -- manual tags --
    async def set_manual_tags(
        self,
        add: Sequence[ManualTag],
        remove: Sequence[tuple[int, str]],
        events: Sequence[bytes] = (),
    ) -> int:
        """Adds and removes (member, tag) pairs (additions first; an existing pair
        keeps who set it and when) and queues `events`, atomically. Returns how many
        pairs actually changed."""
        for _ in range(_RETRIES):
            keys = [f"{t.idx}:{t.tag}" for t in add] + [f"{i}:{t}" for i, t in remove]
            held = {d["_id"] for d in await self.docs.get_many("manual_tags", keys)}
            now, new, changed = set(held), {}, 0
            for t in add:
                if (key := f"{t.idx}:{t.tag}") not in now:
                    now.add(key)
                    new[key] = t
                    changed += 1
            for idx, tag in remove:
                if (key := f"{idx}:{tag}") in now:
                    now.discard(key)
                    changed += 1
            uow = UnitOfWork()
            for key, t in new.items():
                if key in now:  # not when removed again by this call
                    uow.insert("manual_tags", _doc(key, t))
            for key in held - now:
                uow.delete("manual_tags", key)
            uow.emit(*events)
            try:
                await self.docs.commit(uow)
                return changed
            except DuplicateKey:  # a pair added meanwhile: count again
                continue
        raise RuntimeError("manual tags kept changing concurrently")

    async def load_manual_tags(self) -> list[ManualTag]:
        """By member, then tag."""
        docs = await self.docs.find("manual_tags", order=("idx", "tag"))
        return [ManualTag(d["idx"], d["tag"], d["by"], d["at"]) for d in docs]  # 100,000s

    # -- definitions and their versions --
    async def list_tags(self) -> list[TagDefinition]:
        """By name (expressions not parsed)."""
        return [_record(TagDefinition, d) for d in await self.docs.find("tags")]

    async def put_tag(self, tag: TagDefinition, *, create: bool = False) -> None:
        """create=True raises AlreadyExists for a taken name."""
        uow = UnitOfWork()
        (uow.insert if create else uow.put)("tags", _doc(tag.name, tag))
        try:
            await self.docs.commit(uow)
        except DuplicateKey as exc:
            raise AlreadyExists(tag.name) from exc

    async def list_segments(self) -> list[SegmentDefinition]:
        """By id (expressions not parsed)."""
        return [_record(SegmentDefinition, d) for d in await self.docs.find("segments")]

    async def put_segment(self, segment: SegmentDefinition) -> None:
        await self._put("segments", _doc(segment.id, segment))

    async def add_tag_version(self, tag: str, version: TagVersion) -> None:
        await self._put("tag_versions", _doc(f"{tag}@{version.version}", version, tag=tag))

    async def tag_versions(self, tag: str) -> list[TagVersion]:
        """Newest first."""
        docs = await self.docs.find("tag_versions", {"tag": tag}, order=("-version",))
        return [_record(TagVersion, d) for d in docs]

    async def add_segment_version(
        self, segment: str, version: SegmentVersion, members: bytes
    ) -> None:
        """The version with its members (a serialized Roaring bitmap)."""
        key = f"{segment}@{version.version}"
        await self._put("segment_versions", _doc(key, version, segment=segment, bitmap=members))

    async def segment_versions(self, segment: str) -> list[SegmentVersion]:
        """Newest first."""
        docs = await self.docs.find("segment_versions", {"segment": segment}, order=("-version",))
        return [_record(SegmentVersion, d) for d in docs]

    # -- bitmaps --
    async def put_bitmaps(
        self,
        kind: str,
        bitmaps: Mapping[str, bytes],
        events: Sequence[bytes] = (),
        *,
        delete: Sequence[str] = (),
    ) -> None:
        """Replaces the named bitmaps of `kind` ("tag", "segment", "since"), deletes
        those named in `delete` and queues `events`, atomically."""
        uow = UnitOfWork()
        if bitmaps:
            docs = [
                {"_id": f"{kind}:{name}", "kind": kind, "name": name, "bitmap": blob}
                for name, blob in bitmaps.items()
            ]
            uow.put_many("bitmaps", docs)
        for name in delete:
            uow.delete("bitmaps", f"{kind}:{name}")
        uow.emit(*events)
        await self.docs.commit(uow)

    async def load_bitmaps(self, kind: str) -> dict[str, bytes]:
        docs = await self.docs.find("bitmaps", {"kind": kind})
        return {d["name"]: d.get("bitmap", b"") for d in docs}

    # -- scoring runs --
    async def create_run(self, run: Run) -> None:
        """Records a run (a resumed one: over its earlier record)."""
        doc = _doc(run.id, run)
        await self._put("runs", doc)
        run.revision = doc["_v"]

    async def update_run(self, run: Run) -> None:
        """Writes the run's record if nobody changed it since `run.revision` was read
        (Conflict otherwise, writing nothing)."""
        doc = _doc(run.id, run, _v=run.revision)
        uow = UnitOfWork()
        uow.replace("runs", doc)
        await self.docs.commit(uow)
        run.revision = doc["_v"]

    async def load_run(self, run_id: str) -> Run | None:
        doc = await self.docs.get("runs", run_id)
        return _run(doc) if doc else None

    async def recent_runs(self, before_id: str, limit: int) -> list[Run]:
        """Newest first (run ids sort by time), before `before_id` if given."""
        where = {"_id": {"$lt": before_id}} if before_id else None
        return [_run(d) for d in await self.docs.find("runs", where, order=("-_id",), limit=limit)]

    async def acquire_run_lock(self, run_id: str, now: int, stale_after: int) -> str:
        """Takes the one-run-at-a-time lock; returns the holder's run id (ours on
        success). A lock not refreshed for more than `stale_after` microseconds is
        taken over."""
        for _ in range(_RETRIES):
            held = await self.docs.get("run_lock", _LOCK)
            uow = UnitOfWork()
            if held is None:
                uow.insert("run_lock", {"_id": _LOCK, "run_id": run_id, "heartbeat": now})
            elif held["run_id"] == run_id or held["heartbeat"] < now - stale_after:
                uow.replace("run_lock", {**held, "run_id": run_id, "heartbeat": now})
            else:
                return str(held["run_id"])
            try:
                await self.docs.commit(uow)
                return run_id
            except (Conflict, DuplicateKey):  # taken or moved meanwhile: look again
                continue
        raise RuntimeError("the run lock kept changing")

    async def refresh_run_lock(self, run_id: str, now: int) -> None:
        """The holder's heartbeat; nothing if `run_id` no longer holds the lock."""
        await self._change_lock(run_id, lambda held: {**held, "heartbeat": now})

    async def release_run_lock(self, run_id: str) -> None:
        """Frees the lock if `run_id` holds it."""
        await self._change_lock(run_id, None)

    async def _change_lock(self, run_id: str, change) -> None:
        for _ in range(_RETRIES):
            held = await self.docs.get("run_lock", _LOCK)
            if held is None or held["run_id"] != run_id:
                return
            uow = UnitOfWork()
            if change is None:
                uow.delete("run_lock", _LOCK, version=held["_v"])
            else:
                uow.replace("run_lock", change(held))
            try:
                await self.docs.commit(uow)
                return
            except Conflict:
                continue

    async def put_run_stats(self, exchange: str, partition: int, blob: bytes) -> None:
        """What partition `partition` contributes to `exchange` (see partition.py)."""
        doc = {"_id": f"{exchange}#{partition}", "exchange": exchange, "partition": partition}
        await self._put("run_stats", {**doc, "blob": blob})

    async def load_run_stats(self, exchange: str) -> dict[int, bytes]:
        docs = await self.docs.find("run_stats", {"exchange": exchange})
        return {d["partition"]: d.get("blob", b"") for d in docs}

    async def clear_run_stats(self) -> None:
        """Deletes every exchange: called when a run has succeeded (a resumed run
        never reads an earlier attempt's, so none is needed again)."""
        uow = UnitOfWork()
        async for docs in self.docs.scan("run_stats", fields=("partition",)):
            for d in docs:
                uow.delete("run_stats", d["_id"])
        await self.docs.commit(uow)

    # -- repurchase cycles and other state --
    async def set_cycle(self, category: str, days: float) -> None:
        """An operator's repurchase cycle for the category; 0 clears it."""
        uow = UnitOfWork()
        if days > 0:
            uow.put("cycles", {"_id": category, "days": float(days)})
        else:
            uow.delete("cycles", category)
        await self.docs.commit(uow)

    async def load_cycles(self) -> dict[str, float]:
        return {d["_id"]: float(d["days"]) for d in await self.docs.find("cycles")}

    async def learned_cycles(self) -> dict[int, float]:
        """By category id, as the last scoring run learned them."""
        doc = await self.docs.get("state", "learned_cycles")
        return {int(k): v for k, v in (doc or {}).get("cycles", {}).items()}

    async def save_learned_cycles(self, cycles: Mapping[int, float]) -> None:
        doc = {"_id": "learned_cycles", "cycles": {str(k): v for k, v in cycles.items()}}
        await self._put("state", doc)

    async def untracked_categories(self) -> list[str]:
        doc = await self.docs.get("state", "untracked_categories")
        return list((doc or {}).get("names", []))

    async def save_untracked_categories(self, names: Sequence[str]) -> None:
        await self._put("state", {"_id": "untracked_categories", "names": list(names)})


def _run(doc: Mapping[str, Any]) -> Run:
    run = _record(Run, doc)
    run.revision = doc["_v"]
    return run


async def open_store(
    *, sqlite_path: str = "", mongodb_uri: str = "", mongodb_db: str = "pond", mongo_database=None
) -> TaggingStore:
    """MongoDB when a URI (or a database object, for tests) is given, else SQLite."""
    docs = await open_document_store(
        SCHEMA,
        sqlite_path=sqlite_path,
        mongodb_uri=mongodb_uri,
        mongodb_db=mongodb_db,
        mongo_database=mongo_database,
    )
    return TaggingStore(docs)
