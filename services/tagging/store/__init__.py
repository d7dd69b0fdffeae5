"""The tagging store: one interface, two backends (SQLite embedded, MongoDB in
production), held equal by tests/contract/test_tagging_store.py.

It persists what the in-memory engine needs to rebuild itself: the dense member
index, each member's raw history row, manual tags, tag and segment definitions
(with versions), tag and segment bitmaps (Roaring, serialized), scoring runs and
their partition statistics, category ids and cycles, processed event ids, and the
outbox."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass


class AlreadyExists(Exception):
    pass


@dataclass(frozen=True)
class ManualTag:
    idx: int
    tag: str
    by: str
    at: int  # epoch microseconds


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
        self, add: list[ManualTag], remove: list[tuple[int, str]], events: Sequence[bytes] = ()
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
        events: Sequence[bytes] = (),
        *,
        delete: Sequence[str] = (),
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
