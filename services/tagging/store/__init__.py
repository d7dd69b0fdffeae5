"""The tagging store: one interface, two backends (SQLite embedded, MongoDB in
production), held equal by tests/contract/test_tagging_store.py.

It persists what the in-memory engine needs to rebuild itself: the dense member
index, each member's raw history row, manual tags, tag and segment definitions
(with versions), tag and segment bitmaps (Roaring, serialized), scoring runs and
their partition statistics, category ids and cycles, processed event ids, and the
outbox."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import fields
from typing import Any, TypeVar

from services.tagging.domain.definitions import (
    ManualTag,
    SegmentDefinition,
    SegmentVersion,
    TagDefinition,
    TagVersion,
)
from services.tagging.domain.scoring_runs import Run

__all__ = ["AlreadyExists", "ManualTag", "TaggingStore", "open_store"]
R = TypeVar("R")


class AlreadyExists(Exception):
    pass


def _doc(record: Any) -> dict:
    """A typed record as the document the backends store (its fields but `expr`)."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name != "expr"}


def _record(cls: type[R], doc: dict) -> R:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in doc.items() if k in names})


class TaggingStore(abc.ABC):
    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- the dense member index --
    @abc.abstractmethod
    async def index_members(self, member_ids: list[str]) -> dict[str, int]:
        """Get-or-create the dense index of each member id (0, 1, 2, ...)."""

    @abc.abstractmethod
    async def load_index(self) -> list[tuple[int, str]]: ...

    # -- member history rows (services.tagging.domain.history.ROW_COLUMNS) --
    @abc.abstractmethod
    async def get_history(self, idx: int) -> tuple | None: ...

    @abc.abstractmethod
    async def apply_event(self, event_id: str, row: tuple | None, events: list[bytes]) -> bool:
        """Atomically: record `event_id` as processed, replace the row (if given) and
        queue `events` in the outbox. False (nothing written) if processed before."""

    @abc.abstractmethod
    async def put_histories(self, rows: list[tuple]) -> None:
        """Bulk replace rows (imports, backfills, benchmarks)."""

    @abc.abstractmethod
    def scan_histories(
        self, partition: int = 0, partitions: int = 1, batch: int = 50_000
    ) -> AsyncIterator[list[tuple]]:
        """Rows with idx % partitions == partition, ascending idx, in batches."""

    # -- manual tags --
    @abc.abstractmethod
    async def set_manual_tags(
        self, add: list[ManualTag], remove: list[tuple[int, str]], events: list[bytes] = ()
    ) -> int:
        """Adds and removes (member, tag) pairs and queues `events`, atomically.
        Returns how many pairs actually changed."""

    @abc.abstractmethod
    async def load_manual_tags(self) -> list[ManualTag]: ...

    # -- definitions (tags, segments) and their versions --
    @abc.abstractmethod
    async def put_definition(self, kind: str, key: str, doc: dict, *, create: bool = False) -> None:
        """kind is "tag" or "segment"; create=True raises AlreadyExists for a taken key."""

    @abc.abstractmethod
    async def get_definition(self, kind: str, key: str) -> dict | None: ...

    @abc.abstractmethod
    async def list_definitions(self, kind: str) -> list[dict]:
        """Ordered by key."""

    @abc.abstractmethod
    async def add_version(
        self, kind: str, key: str, version: int, doc: dict, bitmap: bytes = b""
    ) -> None: ...

    @abc.abstractmethod
    async def list_versions(self, kind: str, key: str) -> list[tuple[dict, bytes]]:
        """Newest first: (doc, bitmap)."""

    # -- bitmaps --
    @abc.abstractmethod
    async def put_bitmaps(
        self,
        kind: str,
        bitmaps: dict[str, bytes],
        events: list[bytes] = (),
        *,
        delete: list[str] = (),
    ) -> None:
        """Replace the named bitmaps, delete those named in `delete` and queue
        `events`, atomically."""

    @abc.abstractmethod
    async def load_bitmaps(self, kind: str) -> dict[str, bytes]: ...

    # -- scoring runs --
    @abc.abstractmethod
    async def acquire_run_lock(self, run_id: str, now: int, stale_after: int) -> str:
        """Take the one-run-at-a-time lock; returns the holder's run id (ours on
        success). A lock older than `stale_after` microseconds is taken over."""

    @abc.abstractmethod
    async def refresh_run_lock(self, run_id: str, now: int) -> None: ...

    @abc.abstractmethod
    async def release_run_lock(self, run_id: str) -> None: ...

    @abc.abstractmethod
    async def put_run(self, run_id: str, doc: dict, *, expect: dict | None = None) -> bool:
        """Writes the run's doc. With `expect` (field -> value, str or int), only if
        the stored doc has those values (compare-and-set): False, and nothing
        written, otherwise or if there is no stored doc."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> dict | None: ...

    @abc.abstractmethod
    async def list_runs(self, before_id: str, limit: int) -> list[dict]:
        """Newest first (run ids sort by time)."""

    @abc.abstractmethod
    async def put_run_stats(self, run_id: str, partition: int, blob: bytes) -> None: ...

    @abc.abstractmethod
    async def load_run_stats(self, run_id: str) -> dict[int, bytes]: ...

    @abc.abstractmethod
    async def clear_run_stats(self) -> None:
        """Deletes every partition exchange: called when a run has succeeded (a
        resumed run never reads an earlier attempt's, so none is needed again)."""

    # -- categories --
    @abc.abstractmethod
    async def category_ids(self, names: list[str]) -> dict[str, int]:
        """Get-or-create a small integer id per category name."""

    @abc.abstractmethod
    async def load_categories(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def set_cycle(self, category: str, days: float) -> None:
        """0 clears it."""

    @abc.abstractmethod
    async def load_cycles(self) -> dict[str, float]: ...

    # -- typed records over the documents above --
    async def list_tags(self) -> list[TagDefinition]:
        return [_record(TagDefinition, d) for d in await self.list_definitions("tag")]

    async def put_tag(self, tag: TagDefinition, *, create: bool = False) -> None:
        await self.put_definition("tag", tag.name, _doc(tag), create=create)

    async def list_segments(self) -> list[SegmentDefinition]:
        return [_record(SegmentDefinition, d) for d in await self.list_definitions("segment")]

    async def put_segment(self, segment: SegmentDefinition) -> None:
        await self.put_definition("segment", segment.id, _doc(segment))

    async def add_tag_version(self, name: str, version: TagVersion) -> None:
        await self.add_version("tag", name, version.version, _doc(version))

    async def tag_versions(self, name: str) -> list[TagVersion]:
        return [_record(TagVersion, d) for d, _ in await self.list_versions("tag", name)]

    async def add_segment_version(
        self, seg_id: str, version: SegmentVersion, bitmap: bytes
    ) -> None:
        await self.add_version("segment", seg_id, version.version, _doc(version), bitmap)

    async def segment_versions(self, seg_id: str) -> list[SegmentVersion]:
        return [_record(SegmentVersion, d) for d, _ in await self.list_versions("segment", seg_id)]

    async def save_run(self, run: Run, *, expect: dict | None = None) -> bool:
        return await self.put_run(run.id, _doc(run), expect=expect)

    async def load_run(self, run_id: str) -> Run | None:
        doc = await self.get_run(run_id)
        return _record(Run, doc) if doc else None

    async def recent_runs(self, before_id: str, limit: int) -> list[Run]:
        return [_record(Run, d) for d in await self.list_runs(before_id, limit)]

    async def learned_cycles(self) -> dict[int, float]:
        doc = await self.get_definition("state", "learned_cycles")
        return {int(k): v for k, v in (doc or {}).get("cycles", {}).items()}

    async def save_learned_cycles(self, cycles: dict[int, float]) -> None:
        doc = {"id": "learned_cycles", "cycles": {str(k): v for k, v in cycles.items()}}
        await self.put_definition("state", "learned_cycles", doc)

    async def untracked_categories(self) -> list[str]:
        doc = await self.get_definition("state", "untracked_categories")
        return list((doc or {}).get("names", []))

    async def save_untracked_categories(self, names: list[str]) -> None:
        doc = {"id": "untracked_categories", "names": names}
        await self.put_definition("state", "untracked_categories", doc)

    # -- outbox (services.runtime.outbox.OutboxStore) --
    @abc.abstractmethod
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]: ...

    @abc.abstractmethod
    async def outbox_mark_published(self, seqs: list[int]) -> None: ...


async def open_store(
    *, sqlite_path: str = "", mongodb_uri: str = "", mongodb_db: str = "pond", mongo_database=None
) -> TaggingStore:
    if mongo_database is not None or mongodb_uri:
        from services.tagging.store.mongo import MongoTaggingStore

        return await MongoTaggingStore.open(
            uri=mongodb_uri, db_name=mongodb_db, database=mongo_database
        )
    from services.tagging.store.sqlite import SqliteTaggingStore

    return await SqliteTaggingStore.open(sqlite_path)
