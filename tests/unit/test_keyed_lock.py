"""services.runtime.keyed_lock: one holder per key at a time, in arrival order; other
keys unaffected; no entry left behind once no task holds or waits for a key."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.keyed_lock import KeyedLock


async def test_one_holder_per_key_in_arrival_order():
    locks = KeyedLock()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    order: list[tuple[str, int]] = []

    async def work(key: str, n: int) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            order.append((key, n))
            for _ in range(3):
                await asyncio.sleep(0)  # let every other task run while holding
            inside[key] -= 1

    await asyncio.gather(*(work(key, n) for n in range(20) for key in ("a", "b")))
    assert most == {"a": 1, "b": 1}
    for key in ("a", "b"):
        assert [n for k, n in order if k == key] == list(range(20))
    # Two keys went on side by side: b's first holder did not wait for all of a's.
    assert order.index(("b", 0)) < order.index(("a", 19))
    assert len(locks) == 0


async def test_entries_go_when_a_holder_fails_or_a_waiter_is_cancelled():
    locks = KeyedLock()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            assert len(locks) == 1
            raise RuntimeError("boom")
    assert len(locks) == 0

    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            entered.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("k"):
            raise AssertionError("a cancelled waiter never gets the lock")

    held = asyncio.create_task(holder())
    await entered.wait()
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # let it queue behind the holder
    assert len(locks) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await held
    assert len(locks) == 0
    # The key works as before.
    async with locks.hold("k"):
        pass
    assert len(locks) == 0
