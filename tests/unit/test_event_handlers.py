"""Typed event handlers over a real document store (SQLite): a handler's writes and
the event's processed mark commit together; a handler may commit early (to act after
its commit under a lock) and learns when the event was applied before; a concurrent
write re-runs the handler on fresh reads; unknown payload types are ignored."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pond.events.v1 import member_events_pb2 as mev

from services.runtime.documents import Collection, Schema, UnitOfWork, open_document_store
from services.runtime.eventbus import make_event
from services.runtime.events import EventHandlers, Received

SCHEMA = Schema("handlers", (Collection("counts"),))


@pytest.fixture
async def store(tmp_path):
    s = await open_document_store(SCHEMA, sqlite_path=str(tmp_path / "h.db"))
    await s.commit(_insert({"_id": "m1", "n": 0}))
    yield s
    await s.close()


def _insert(doc: dict) -> UnitOfWork:
    uow = UnitOfWork()
    uow.insert("counts", doc)
    return uow


def registered(member_id: str = "m1"):
    return make_event("member", member_id, mev.MemberRegistered(member_id=member_id),
                      datetime.now(UTC))


async def test_writes_and_mark_commit_together_once(store):
    async def count(event: Received[mev.MemberRegistered], uow: UnitOfWork) -> None:
        doc = await store.get("counts", event.payload.member_id)
        doc["n"] += 1
        uow.replace("counts", doc)

    handlers = EventHandlers("c", store).on(mev.MemberRegistered, count)
    event = registered()
    await handlers(event)
    await handlers(event)  # redelivered
    assert (await store.get("counts", "m1"))["n"] == 1
    assert await store.is_processed("c", event.id)
    await EventHandlers("other", store).on(mev.MemberRegistered, count)(event)
    assert (await store.get("counts", "m1"))["n"] == 2  # once per consumer


async def test_a_handler_may_commit_itself_and_learns_about_a_replay(store):
    outcomes: list[bool] = []
    race = False

    async def early(event: Received[mev.MemberRegistered], uow: UnitOfWork) -> None:
        doc = await store.get("counts", "m1")
        doc["n"] += 1
        uow.replace("counts", doc)
        if race:  # another replica applies the same event meanwhile
            other = UnitOfWork()
            other.mark_processed("c", event.id)
            await store.commit(other)
        outcomes.append(await event.commit())

    handlers = EventHandlers("c", store).on(mev.MemberRegistered, early)
    await handlers(registered())
    race = True
    await handlers(registered())
    assert outcomes == [True, False]  # False: applied before, nothing written
    assert (await store.get("counts", "m1"))["n"] == 1


async def test_a_concurrent_write_reruns_the_handler(store):
    runs = 0

    async def racing(event: Received[mev.MemberRegistered], uow: UnitOfWork) -> None:
        nonlocal runs
        runs += 1
        doc = await store.get("counts", "m1")
        if runs == 1:  # another writer gets in between the read and the commit
            other = dict(doc, n=100)
            replace = UnitOfWork()
            replace.replace("counts", other)
            await store.commit(replace)
        doc["n"] += 1
        uow.replace("counts", doc)

    await EventHandlers("c", store).on(mev.MemberRegistered, racing)(registered())
    assert runs == 2 and (await store.get("counts", "m1"))["n"] == 101


async def test_unknown_payload_types_are_ignored(store):
    async def never(event: Received[mev.OrderPaid], uow: UnitOfWork) -> None:
        raise AssertionError("not an OrderPaid")

    event = registered()
    await EventHandlers("c", store).on(mev.OrderPaid, never)(event)
    assert not await store.is_processed("c", event.id)
    with pytest.raises(ValueError):
        EventHandlers("c", store).on(mev.OrderPaid, never).on(mev.OrderPaid, never)
