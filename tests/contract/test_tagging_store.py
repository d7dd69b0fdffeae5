"""The tagging store contract: every test runs against every backend. SQLite and the
MongoDB backend on mongomock-motor always; a real MongoDB when MONGODB_URI is set."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import pytest
import pytest_asyncio

from services.tagging.domain.history import ROW_COLUMNS, MemberHistory
from services.tagging.store import AlreadyExists, ManualTag, TaggingStore, open_store

TODAY = 20_000


@pytest.fixture(params=["sqlite", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def backend(request) -> str:
    return request.param


@pytest_asyncio.fixture
async def opener(backend: str, tmp_path):
    """An async function opening a store on the same database each time it is called."""
    if backend == "sqlite":
        path = str(tmp_path / "tagging.db")

        async def open_sqlite() -> TaggingStore:
            return await open_store(sqlite_path=path)

        yield open_sqlite
    elif backend == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        db = AsyncMongoMockClient()[f"t_{uuid.uuid4().hex}"]

        async def open_mongomock() -> TaggingStore:
            return await open_store(mongo_database=db)

        yield open_mongomock
    else:
        uri = os.environ.get("MONGODB_URI", "")
        if not uri:
            pytest.skip("MONGODB_URI is not set")
        from services.runtime.storage import open_mongo

        name = f"pond_contract_{uuid.uuid4().hex[:16]}"
        db = open_mongo(uri, name)

        async def open_mongodb() -> TaggingStore:
            return await open_store(mongo_database=db)

        try:
            yield open_mongodb
        finally:
            await db.client.drop_database(name)
            db.client.close()


@pytest_asyncio.fixture
async def store(opener):
    s = await opener()
    yield s
    await s.close()


# -- builders --


def history(idx: int, *, orders: int = 2, **fields) -> MemberHistory:
    h = MemberHistory(
        idx, **{"registered_day": TODAY - 900, "tier": 2, "points_balance": 350, **fields}
    )
    for i in range(orders):
        h.order_paid(TODAY - 30 + i, 12_345 + i, {1, 3 + i % 2}, TODAY)
    if orders:
        h.order_refunded(TODAY - 30, 345, False, TODAY)
        h.interacted(TODAY - 3, TODAY)
    return h


def row(idx: int, **kw) -> tuple:
    return history(idx, **kw).to_row()


def mtag(idx: int, tag: str, by: str = "alice", at: int = 1_700_000_000_000_001) -> ManualTag:
    return ManualTag(idx, tag, by, at)


async def scan(
    store: TaggingStore, partition: int = 0, partitions: int = 1, batch: int = 50_000
) -> list[list[tuple]]:
    batches = []
    async for b in store.scan_histories(partition, partitions, batch):
        batches.append(b)
        assert len(batches) <= 1_000, "scan_histories does not advance"
    return batches


# -- the dense member index --


async def test_index_members_assigns_dense_ids_in_order_of_first_appearance(store):
    assert await store.index_members([]) == {}
    assert await store.index_members(["m-b", "m-a", "m-b", "m-c"]) == {"m-b": 0, "m-a": 1, "m-c": 2}
    # Known ids are returned unchanged, in any order and with duplicates.
    assert await store.index_members(["m-c", "m-b", "m-c"]) == {"m-c": 2, "m-b": 0}
    # New ones continue the sequence, interleaved with known ones.
    assert await store.index_members(["m-e", "m-a", "m-d", "m-e"]) == {"m-e": 3, "m-a": 1, "m-d": 4}
    assert await store.load_index() == [(0, "m-b"), (1, "m-a"), (2, "m-c"), (3, "m-e"), (4, "m-d")]


async def test_index_members_many_at_once(store):
    ids = [f"member-{i:05d}" for i in range(1_200)]
    got = await store.index_members(ids)
    assert got == {m: i for i, m in enumerate(ids)}
    again = await store.index_members([*reversed(ids), "late"])
    assert again == {**got, "late": 1_200}
    assert await store.load_index() == [*((i, m) for i, m in enumerate(ids)), (1_200, "late")]


async def test_index_and_categories_survive_reopen(opener):
    s = await opener()
    await s.index_members(["a", "b"])
    await s.category_ids(["shoes"])
    await s.close()
    s = await opener()
    try:
        assert await s.index_members(["c", "a"]) == {"c": 2, "a": 0}
        assert await s.category_ids(["bags", "shoes"]) == {"bags": 1, "shoes": 0}
        assert await s.load_index() == [(0, "a"), (1, "b"), (2, "c")]
    finally:
        await s.close()


async def test_concurrent_index_members_agree(opener):
    """Two stores creating overlapping ids at once: every member gets one id, both see
    the same one. (Concurrent creators of the same id may leave gaps on MongoDB.)"""
    a, b = await opener(), await opener()
    try:
        first, second = await asyncio.gather(
            a.index_members(["x", "y", "z"]), b.index_members(["z", "y", "w"])
        )
        assert first["y"] == second["y"] and first["z"] == second["z"]
        index = await a.load_index()
        assert sorted(m for _, m in index) == ["w", "x", "y", "z"]
        assert dict((m, i) for i, m in index) == {**first, **second}
        assert await a.index_members(["w", "x", "y", "z"]) == {**first, **second}
    finally:
        await a.close()
        await b.close()


# -- history rows --


async def test_history_rows_round_trip_exactly(store):
    full = row(0)
    empty = MemberHistory(1).to_row()
    big = row(2, orders=5, spend_total=-(2**40), first_order_day=-1)
    for i, r in enumerate((full, empty, big)):
        assert await store.apply_event(f"ev-{i}", r, []) is True
    assert len(full) == len(ROW_COLUMNS)
    assert full[8] and full[9] and full[11] and empty[8] == b""
    for r in (full, empty, big):
        got = await store.get_history(r[0])
        assert got == r
        assert [type(v) for v in got] == [type(v) for v in r]
    assert MemberHistory.from_row(await store.get_history(0)) == history(0)
    assert await store.get_history(99) is None


async def test_apply_event_is_processed_once(store):
    r1 = row(5)
    assert await store.apply_event("order-1", r1, [b"tag-added", b"tag-removed"]) is True
    # A replay writes nothing: neither the row nor the events.
    assert await store.apply_event("order-1", row(5, orders=1), [b"again"]) is False
    assert await store.get_history(5) == r1
    assert [e for _, e in await store.outbox_pending(10)] == [b"tag-added", b"tag-removed"]
    # No row: only the events (and the event id).
    assert await store.apply_event("order-2", None, [b"second"]) is True
    assert await store.get_history(5) == r1
    assert await store.apply_event("order-2", row(5, orders=0), []) is False
    assert await store.get_history(5) == r1
    # A new row replaces the old one.
    r2 = row(5, orders=3)
    assert await store.apply_event("order-3", r2, []) is True
    assert await store.get_history(5) == r2
    assert [e for _, e in await store.outbox_pending(10)] == [
        b"tag-added",
        b"tag-removed",
        b"second",
    ]


async def test_put_and_scan_histories(store):
    assert await scan(store) == []
    indexes = [i for i in range(14) if i != 5]
    rows = {i: row(i, orders=i % 4) for i in indexes}
    await store.put_histories([rows[i] for i in reversed(indexes)])
    rows[7] = row(7, orders=3, tier=1)
    await store.put_histories([rows[7]])
    await store.put_histories([])

    everything = await scan(store)
    assert everything == [[rows[i] for i in indexes]]
    assert await store.get_history(7) == rows[7]

    seen: list[int] = []
    for p in range(3):
        batches = await scan(store, p, 3, batch=2)
        assert all(1 <= len(b) <= 2 for b in batches)
        got = [r for b in batches for r in b]
        ids = [r[0] for r in got]
        assert ids == sorted(ids) and all(i % 3 == p for i in ids)
        assert got == [rows[i] for i in ids]
        seen += ids
    assert sorted(seen) == indexes  # disjoint (no repeats) and covering all

    batches = await scan(store, 1, 3, batch=2)
    assert [[r[0] for r in b] for b in batches] == [[1, 4], [7, 10], [13]]


# -- manual tags --


async def test_manual_tags_count_actual_changes(store):
    assert await store.set_manual_tags([], []) == 0
    first = [mtag(1, "vip"), mtag(2, "vip"), mtag(1, "churn"), mtag(1, "vip", by="bob")]
    assert await store.set_manual_tags(first, []) == 3
    # Existing pairs are left as they were (the first writer's `by` and `at`).
    assert await store.set_manual_tags([mtag(2, "vip", by="carol", at=5)], []) == 0
    assert await store.load_manual_tags() == [mtag(1, "churn"), mtag(1, "vip"), mtag(2, "vip")]

    removed = await store.set_manual_tags([], [(1, "vip"), (1, "vip"), (9, "nobody")])
    assert removed == 1
    assert await store.set_manual_tags([], [(1, "vip")]) == 0
    # Additions come before removals: a pair in both is added, then removed.
    assert (
        await store.set_manual_tags([mtag(3, "new"), mtag(2, "vip")], [(3, "new"), (2, "vip")]) == 3
    )
    assert await store.load_manual_tags() == [mtag(1, "churn")]


async def test_manual_tag_changes_queue_their_events_with_them(store):
    await store.set_manual_tags([mtag(1, "vip")], [], [b"vip-gained"])
    await store.set_manual_tags([], [(1, "vip")], [b"vip-lost"])
    assert [e for _, e in await store.outbox_pending(10)] == [b"vip-gained", b"vip-lost"]


# -- definitions and versions --


async def test_definitions(store):
    b = {"key": "b", "name": "Big spender", "rule": {"op": ">=", "args": [1, 2.5]}}
    await store.put_definition("tag", "b", b, create=True)
    with pytest.raises(AlreadyExists):
        await store.put_definition("tag", "b", {"key": "b", "name": "other"}, create=True)
    assert await store.get_definition("tag", "b") == b
    # Another kind is another namespace.
    await store.put_definition("segment", "b", {"key": "b", "segment": True}, create=True)
    await store.put_definition("tag", "c", {"key": "c"})
    await store.put_definition("tag", "a", {"key": "a", "name": "高价值", "range": (1, 2)})
    b2 = {"key": "b", "name": "Bigger spender"}
    await store.put_definition("tag", "b", b2)

    assert await store.get_definition("tag", "b") == b2
    assert await store.get_definition("tag", "a") == {
        "key": "a",
        "name": "高价值",
        "range": [1, 2],
    }  # as JSON
    assert await store.get_definition("tag", "zz") is None
    assert await store.get_definition("segment", "a") is None
    assert [d["key"] for d in await store.list_definitions("tag")] == ["a", "b", "c"]
    assert await store.list_definitions("segment") == [{"key": "b", "segment": True}]
    assert await store.list_definitions("other") == []


async def test_versions_newest_first(store):
    for v in (2, 1, 3):
        await store.add_version("tag", "vip", v, {"version": v}, bytes([v]) * 3)
    await store.add_version("tag", "other", 9, {"version": 9})
    await store.add_version("segment", "vip", 4, {"version": 4}, b"s")
    await store.add_version("tag", "vip", 2, {"version": 2, "edited": True}, b"\x00\xff")

    assert await store.list_versions("tag", "vip") == [
        ({"version": 3}, b"\x03\x03\x03"),
        ({"version": 2, "edited": True}, b"\x00\xff"),
        ({"version": 1}, b"\x01\x01\x01"),
    ]
    assert await store.list_versions("tag", "other") == [({"version": 9}, b"")]
    assert await store.list_versions("tag", "none") == []


# -- bitmaps --


async def test_bitmaps_replace_and_queue_events(store):
    await store.put_bitmaps("tag", {"vip": b"\x01\x02", "churn": b"\x03"}, [b"ev-1"])
    await store.put_bitmaps("segment", {"vip": b"segment"})
    await store.put_bitmaps("tag", {"vip": b"\x09", "new": b""}, [b"ev-2", b"ev-3"])
    await store.put_bitmaps("tag", {})

    assert await store.load_bitmaps("tag") == {"vip": b"\x09", "churn": b"\x03", "new": b""}
    assert await store.load_bitmaps("segment") == {"vip": b"segment"}
    assert await store.load_bitmaps("none") == {}
    assert [e for _, e in await store.outbox_pending(10)] == [b"ev-1", b"ev-2", b"ev-3"]


async def test_bitmaps_delete_with_replace_atomically(store):
    await store.put_bitmaps("since", {"vip@1": b"a", "vip@2": b"b"})
    await store.put_bitmaps("tag", {"vip@1": b"tag"})
    await store.put_bitmaps("since", {"vip@3": b"c"}, [b"ev"], delete=["vip@1", "nope"])
    await store.put_bitmaps("since", {}, delete=["vip@2"])
    assert await store.load_bitmaps("since") == {"vip@3": b"c"}
    assert await store.load_bitmaps("tag") == {"vip@1": b"tag"}  # other kinds untouched
    assert [e for _, e in await store.outbox_pending(10)] == [b"ev"]


# -- scoring runs --


async def test_run_lock(store):
    stale = 100
    assert await store.acquire_run_lock("r1", 1_000, stale) == "r1"
    assert await store.acquire_run_lock("r2", 1_050, stale) == "r1"  # refused while fresh
    assert await store.acquire_run_lock("r1", 1_060, stale) == "r1"  # ours: heartbeat 1060
    assert await store.acquire_run_lock("r2", 1_160, stale) == "r1"  # 1060 is not < 1060
    await store.refresh_run_lock("r1", 1_200)
    assert await store.acquire_run_lock("r2", 1_300, stale) == "r1"
    assert await store.acquire_run_lock("r2", 1_301, stale) == "r2"  # stale: taken over
    # The old holder can neither refresh nor release it any more.
    await store.refresh_run_lock("r1", 1_390)
    await store.release_run_lock("r1")
    assert await store.acquire_run_lock("r3", 1_400, stale) == "r2"
    assert await store.acquire_run_lock("r3", 1_402, stale) == "r3"
    await store.release_run_lock("r3")
    assert await store.acquire_run_lock("r4", 1_403, stale) == "r4"  # free after release


async def test_runs(store):
    for n in (3, 1, 5, 2, 4):
        await store.put_run(f"run-{n:03d}", {"id": f"run-{n:03d}", "state": "running"})
    await store.put_run("run-004", {"id": "run-004", "state": "done", "members": 12})

    assert await store.get_run("run-004") == {"id": "run-004", "state": "done", "members": 12}
    assert await store.get_run("run-999") is None

    async def ids(before: str, limit: int) -> list[str]:
        return [d["id"] for d in await store.list_runs(before, limit)]

    assert await ids("", 2) == ["run-005", "run-004"]
    assert await ids("run-004", 2) == ["run-003", "run-002"]
    assert await ids("run-002", 10) == ["run-001"]
    assert await ids("run-001", 10) == []
    assert await ids("run-0035", 10) == ["run-003", "run-002", "run-001"]
    assert await ids("", 0) == []


async def test_put_run_compare_and_set(store):
    doc = {"id": "r1", "state": "running", "stage": "score", "attempt": 0}
    assert not await store.put_run("r1", doc, expect={"state": "running"})  # none stored
    assert await store.get_run("r1") is None
    assert await store.put_run("r1", doc)
    assert await store.put_run("r1", {**doc, "stage": "write"}, expect={"state": "running"})
    cancelled = {**doc, "state": "cancelled"}
    assert not await store.put_run("r1", cancelled, expect={"state": "running", "stage": "score"})
    assert not await store.put_run("r1", cancelled, expect={"state": "running", "attempt": 1})
    assert (await store.get_run("r1"))["stage"] == "write"
    assert await store.put_run("r1", cancelled, expect={"state": "running", "attempt": 0})
    assert not await store.put_run("r1", doc, expect={"state": "running"})
    assert await store.get_run("r1") == cancelled


async def test_run_stats(store):
    await store.put_run_stats("run-1", 0, b"zero")
    await store.put_run_stats("run-1", 2, b"\x00two")
    await store.put_run_stats("run-2", 0, b"other")
    await store.put_run_stats("run-1", 0, b"ZERO")
    assert await store.load_run_stats("run-1") == {0: b"ZERO", 2: b"\x00two"}
    assert await store.load_run_stats("run-2") == {0: b"other"}
    assert await store.load_run_stats("run-3") == {}
    await store.clear_run_stats()
    assert await store.load_run_stats("run-1") == {} and await store.load_run_stats("run-2") == {}


# -- categories and cycles --


async def test_categories_dense_and_idempotent(store):
    assert await store.category_ids([]) == {}
    assert await store.category_ids(["shoes", "bags", "shoes"]) == {"shoes": 0, "bags": 1}
    assert await store.category_ids(["hats", "bags", "coats"]) == {"hats": 2, "bags": 1, "coats": 3}
    assert await store.category_ids(["coats"]) == {"coats": 3}
    assert await store.load_categories() == {"shoes": 0, "bags": 1, "hats": 2, "coats": 3}


async def test_cycles(store):
    await store.set_cycle("shoes", 30)
    await store.set_cycle("bags", 7.5)
    await store.set_cycle("hats", 0)  # clearing an unknown one is fine
    cycles = await store.load_cycles()
    assert cycles == {"shoes": 30.0, "bags": 7.5}
    assert all(type(v) is float for v in cycles.values())
    await store.set_cycle("shoes", 14.25)
    await store.set_cycle("bags", 0)
    assert await store.load_cycles() == {"shoes": 14.25}


# -- outbox --


async def test_outbox_order_and_publishing(store):
    assert await store.outbox_pending(10) == []
    await store.apply_event("e-1", None, [b"a", b"b"])
    await store.put_bitmaps("tag", {"x": b"1"}, [b"c"])
    await store.apply_event("e-2", row(1), [b"d"])

    pending = await store.outbox_pending(10)
    assert [e for _, e in pending] == [b"a", b"b", b"c", b"d"]
    seqs = [s for s, _ in pending]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    assert await store.outbox_pending(2) == pending[:2]
    assert await store.outbox_pending(0) == []

    await store.outbox_mark_published([])
    await store.outbox_mark_published([seqs[0], seqs[2]])
    assert await store.outbox_pending(10) == [pending[1], pending[3]]
    await store.outbox_mark_published([seqs[1], seqs[3], seqs[3]])
    assert await store.outbox_pending(10) == []

    # Sequence numbers keep increasing after everything was published.
    await store.apply_event("e-3", None, [b"e"])
    [(seq, event)] = await store.outbox_pending(10)
    assert event == b"e" and seq > seqs[-1]


# -- the MongoDB backend's own recovery paths (no SQLite equivalent) --


@pytest.fixture
def mongo_only(backend):
    if backend == "sqlite":
        pytest.skip("MongoDB backend only")


async def test_mongo_index_members_reads_back_a_concurrent_insert(mongo_only, store, monkeypatch):
    """Another writer inserts "x" between this writer's lookup and its insert: the
    unique index refuses the second "x", which is read back; the other names are kept."""
    assert await store.index_members(["x"]) == {"x": 0}
    real_lookup = store._lookup
    calls = 0

    async def stale_lookup(collection, field, names):
        nonlocal calls
        calls += 1
        return {} if calls == 1 else await real_lookup(collection, field, names)

    monkeypatch.setattr(store, "_lookup", stale_lookup)
    got = await store.index_members(["y", "x", "z"])
    assert got["x"] == 0 and calls == 2
    assert sorted(got.values()) == sorted(set(got.values())) and min(got["y"], got["z"]) > 0
    index = await store.load_index()
    assert [m for _, m in index] == ["x", "y", "z"] and dict((m, i) for i, m in index) == got


async def test_mongo_sequences_survive_lost_counters(mongo_only, opener):
    s = await opener()
    await s.index_members(["a", "b", "c"])
    await s.category_ids(["shoes", "bags"])
    await s.apply_event("e-1", None, [b"one", b"two"])
    [*_, (last_seq, _)] = await s.outbox_pending(10)
    await s._db["counters"].delete_many({})
    # Behind its collection while running: the taken id is skipped.
    assert await s.index_members(["d"]) == {"d": 3}
    await s._db["counters"].delete_many({})
    await s.close()

    s = await opener()  # open() raises each counter to what its collection holds
    try:
        assert await s.index_members(["e", "a"]) == {"e": 4, "a": 0}
        assert await s.category_ids(["hats"]) == {"hats": 2}
        await s.apply_event("e-2", None, [b"three"])
        assert [e for _, e in await s.outbox_pending(10)] == [b"one", b"two", b"three"]
        assert (await s.outbox_pending(10))[-1][0] == last_seq + 1
    finally:
        await s.close()


async def test_sqlite_write_cancelled_mid_transaction_leaves_the_writer_usable(tmp_path):
    """A client giving up mid-write must not leave the SQLite transaction open."""
    import asyncio as _asyncio

    from services.tagging.store import open_store as _open

    store = await _open(sqlite_path=str(tmp_path / "t.db"))
    try:
        task = _asyncio.ensure_future(store.put_run("r1", {"id": "r1"}))
        await _asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(_asyncio.CancelledError):
            await task
        await store.put_run("r2", {"id": "r2"})
        assert await store.get_run("r2") == {"id": "r2"}
    finally:
        await store.close()
