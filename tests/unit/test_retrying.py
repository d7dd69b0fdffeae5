"""services.runtime.retrying: attempts on one key take turns; a lost race (Conflict,
DuplicateKey) goes again; after the last attempt the caller's error; other errors
pass through at once."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.documents import Conflict, DuplicateKey
from services.runtime.retrying import Retrying


class Exhausted(Exception):
    pass


async def test_lost_races_go_again_until_one_wins():
    retrying = Retrying(Exhausted)
    tries = 0

    async def attempt() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise Conflict("groups", "g1")
        if tries == 2:
            raise DuplicateKey("memberships", "g1:m1")
        return "done"

    assert await retrying.run("g1", attempt) == "done" and tries == 3


async def test_the_callers_error_after_the_last_attempt_and_others_at_once():
    retrying = Retrying(Exhausted, attempts=3)
    tries = 0

    async def always_loses() -> None:
        nonlocal tries
        tries += 1
        raise Conflict("groups", "g1")

    with pytest.raises(Exhausted):
        await retrying.run("g1", always_loses)
    assert tries == 3

    async def refused() -> None:
        raise ValueError("a rule said no")

    with pytest.raises(ValueError):
        await retrying.run("g1", refused)


async def test_attempts_on_one_key_take_turns():
    retrying = Retrying(Exhausted)
    inside = most = 0

    async def attempt() -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0)
        inside -= 1

    await asyncio.gather(*(retrying.run("pool", attempt) for _ in range(20)))
    assert most == 1


async def test_a_lost_race_gives_the_turn_up_for_its_pause():
    """An attempt that lost to another process waits out its pause outside the turn:
    the attempts queued behind it go meanwhile, and it goes again after them."""
    retrying = Retrying(Exhausted)
    order: list[str] = []
    lost_once = False

    async def loses_once() -> None:
        nonlocal lost_once
        order.append("first")
        if not lost_once:
            lost_once = True
            await asyncio.sleep(0)  # the others queue up on the key meanwhile
            raise Conflict("groups", "g1")

    async def queued(name: str) -> None:
        order.append(name)

    await asyncio.gather(retrying.run("pool", loses_once),
                         *(retrying.run("pool", lambda n=n: queued(n)) for n in ("a", "b")))
    assert order == ["first", "a", "b", "first"]
