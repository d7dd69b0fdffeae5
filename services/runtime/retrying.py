"""Writes that race on a record, for every service: attempts on one key take turns
within the process (a keyed lock, so they never conflict with each other and
contention never becomes a failure), and across processes the store's guards decide:
an attempt that lost (Conflict, or DuplicateKey when a concurrent insert won) reloads
and goes again after a short, growing, jittered pause, up to `attempts` times. The
turn is given up for the pause: the attempts queued behind it on this key go on
meanwhile (each loads afresh) instead of waiting out a race another process won.

    writes = Retrying(on_exhausted=lambda: conflict("CONCURRENT_UPDATE", "...", domain=D))
    return await writes.run(("pool", rule_id), attempt)   # attempt: load, decide, commit
    return await writes.run_all({a, b}, attempt)          # a write of two records (a merge)

An attempt is the whole read-decide-commit: it must reload what it decides on."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from services.runtime.documents import Conflict, DuplicateKey
from services.runtime.keyed_lock import KeyedLock

T = TypeVar("T")
DEFAULT_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 0.005
BACKOFF_CAP_SECONDS = 0.25


class Retrying:
    def __init__(
        self,
        on_exhausted: Callable[[], Exception],
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        retry_on: tuple[type[Exception], ...] = (Conflict, DuplicateKey),
    ) -> None:
        self._locks = KeyedLock()
        self._on_exhausted = on_exhausted
        self._max_attempts = attempts
        self._retry_on = retry_on

    def hold(self, key: Hashable) -> AbstractAsyncContextManager[None]:
        """`key`'s turn without retrying: for a write whose races the caller handles."""
        return self._locks.hold(key)

    async def run(self, key: Hashable | None, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` under `key`'s turn, again while it loses races. `key` None:
        nothing to hold (a record that does not exist yet)."""
        if key is None:
            return await self._attempts(contextlib.nullcontext, attempt)
        return await self._attempts(lambda: self._locks.hold(key), attempt)

    async def run_all(self, keys: set[Hashable], attempt: Callable[[], Awaitable[T]]) -> T:
        """`run` holding several keys: taken in sorted order, so two calls holding
        overlapping sets never wait on each other crosswise. Keys must sort."""
        return await self._attempts(lambda: self._hold_all(keys), attempt)

    @contextlib.asynccontextmanager
    async def _hold_all(self, keys: set[Hashable]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as held:
            for key in sorted(keys):  # type: ignore[type-var]
                await held.enter_async_context(self._locks.hold(key))
            yield

    async def _attempts(
        self,
        turn: Callable[[], AbstractAsyncContextManager[object]],
        attempt: Callable[[], Awaitable[T]],
    ) -> T:
        for n in range(self._max_attempts):
            if n:  # outside the turn: see the module's docstring
                pause = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**n)
                await asyncio.sleep(random.uniform(0, pause))
            async with turn():
                try:
                    return await attempt()
                except self._retry_on:
                    continue
        raise self._on_exhausted()
