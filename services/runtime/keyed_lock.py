"""Mutual exclusion by key within one process (one event loop): `async with
locks.hold(key):` lets one task at a time through per key, in arrival order, while
other keys go on in parallel.

For writes to one record (a member) that would otherwise race each other's optimistic
version checks: serialised here, they never conflict within the process, so contention
never becomes a retry or a failure. Across processes nothing is serialised; the store's
version guards still decide, and the loser retries.

A key's entry lives only while a task holds or waits for it, so the table stays as
small as the number of keys in use at once, however many keys pass through."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # tasks holding or waiting for the lock


class KeyedLock:
    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}

    def hold(self, key: Hashable) -> _Held:
        return _Held(self, key)

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._entries)

    async def _acquire(self, key: Hashable) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:  # cancelled while waiting: leave nothing behind
            self._leave(key, entry)
            raise
        return entry

    def _release(self, key: Hashable, entry: _Entry) -> None:
        entry.lock.release()
        self._leave(key, entry)

    def _leave(self, key: Hashable, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]


class _Held:
    """`async with` context of one hold of a key."""

    __slots__ = ("_entry", "_key", "_locks")

    def __init__(self, locks: KeyedLock, key: Hashable) -> None:
        self._locks = locks
        self._key = key
        self._entry: _Entry | None = None

    async def __aenter__(self) -> None:
        self._entry = await self._locks._acquire(self._key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._entry is not None
        self._locks._release(self._key, self._entry)
        self._entry = None
