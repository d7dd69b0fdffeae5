"""The document store a host hands its service: the engine's, with one addition:
after each commit it wakes what the commit concerns (the outbox relay when it wrote
events, the timer loop when it set a timer due soon), so services never wire
"on commit" callbacks themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

from services.runtime.documents import (
    Doc,
    DocumentStore,
    IdempotencyRecord,
    Key,
    Order,
    Timer,
    UnitOfWork,
)


class NotifyingStore(DocumentStore):
    def __init__(self, inner: DocumentStore) -> None:
        self.inner = inner
        self.schema = inner.schema
        self.engine: Literal["sqlite", "mongodb"] = inner.engine
        self.on_events: Callable[[], None] = lambda: None
        self.on_timers: Callable[[UnitOfWork], None] = lambda _uow: None

    async def commit(self, uow: UnitOfWork) -> None:
        await self.inner.commit(uow)
        if uow.events:
            self.on_events()
        if uow.timers:
            self.on_timers(uow)

    # -- everything else as the engine does it --
    async def get(self, collection: str, key: Key) -> Doc | None:
        return await self.inner.get(collection, key)

    async def get_many(self, collection: str, keys: Sequence[Key]) -> list[Doc]:
        return await self.inner.get_many(collection, keys)

    async def may_exist(self, collection: str, key: Key) -> bool:
        return await self.inner.may_exist(collection, key)

    async def find(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order: Order = ("_id",),
        limit: int | None = None,
    ) -> list[Doc]:
        return await self.inner.find(collection, where, order=order, limit=limit)

    async def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        return await self.inner.count(collection, where)

    def scan(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        batch: int = 1000,
        partition: tuple[int, int] | None = None,
        fields: Sequence[str] | None = None,
    ) -> AsyncIterator[list[Doc]]:
        return self.inner.scan(collection, where, batch=batch, partition=partition, fields=fields)

    async def next_ids(self, sequence: str, count: int = 1) -> list[int]:
        return await self.inner.next_ids(sequence, count)

    async def recall(self, scope: str, key: str) -> IdempotencyRecord | None:
        return await self.inner.recall(scope, key)

    async def is_processed(self, consumer: str, event_id: str) -> bool:
        return await self.inner.is_processed(consumer, event_id)

    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        return await self.inner.outbox_pending(limit)

    async def outbox_mark_published(self, seqs: Sequence[int]) -> None:
        await self.inner.outbox_mark_published(seqs)

    async def due_timers(self, now: int, limit: int) -> list[Timer]:
        return await self.inner.due_timers(now, limit)

    async def prune(self, now: int, processed_before: int) -> int:
        return await self.inner.prune(now, processed_before)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # What an engine offers beyond the API (e.g. tests' introspection).
        return getattr(self.inner, name)
