"""The tagging store contract (services.tagging.store, written once on the runtime's
document store): every test runs against every engine. SQLite and the MongoDB engine on
mongomock-motor always; a real MongoDB when MONGODB_URI is set."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import numpy as np
import pytest
import pytest_asyncio

from services.runtime.documents import PROCESSED, Conflict, DuplicateKey, UnitOfWork
from services.tagging.domain.definitions import (
    ManualTag,
    SegmentDefinition,
    SegmentVersion,
    TagDefinition,
    TagVersion,
)
from services.tagging.domain.history import ROW_COLUMNS, MemberHistory
from services.tagging.domain.packed import unpack_row
from services.tagging.domain.scoring_runs import Run
from services.tagging.store import AlreadyExists, TaggingStore, open_store

TODAY = 20_000
CONSUMER = "tagging"


async def commit_history(
    store: TaggingStore, event_id: str, history: MemberHistory | None, events=()
) -> bool:
    """What a member event handler commits: the history (if any) and its events with
    the event's processed mark; False, nothing written, if the mark existed."""
    uow = UnitOfWork()
    uow.mark_processed(CONSUMER, event_id)
    if history is not None:
        store.add_history(uow, history)
    uow.emit(*events)
    try:
        await store.docs.commit(uow)
    except DuplicateKey as exc:
        if exc.collection != PROCESSED:
            raise
        return False
    return True


@pytest.fixture(params=["sqlite", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def backend(request) -> str:
    return request.param


@pytest_asyncio.fixture
async def opener(backend: str, tmp_path):
    """An async function opening a store on the same database each time it is called."""
    if backend == "sqlite":
        path = str(tmp_path / "tagging.sqlite")

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
    """The scanned batches as history rows."""
    batches = []
    async for idx, blobs in store.scan_histories(partition, partitions, batch):
        assert isinstance(idx, np.ndarray) and len(idx) == len(blobs)
        batches.append([unpack_row(int(i), b) for i, b in zip(idx, blobs, strict=True)])
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
    the same one. (Concurrent creators of the same id may leave gaps.)"""
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


async def test_index_members_reads_back_a_concurrent_insert(store, monkeypatch):
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


# -- member histories --


async def test_histories_round_trip_exactly(store):
    full = history(0)
    empty = MemberHistory(1)
    big = history(2, orders=5, spend_total=-(2**40), first_order_day=-1)
    for i, h in enumerate((full, empty, big)):
        assert await commit_history(store, f"ev-{i}", h, []) is True
    assert len(full.to_row()) == len(ROW_COLUMNS)
    for h in (full, empty, big):
        got = await store.get_history(h.idx)
        assert got == h
        assert got.to_row() == h.to_row()
        assert [type(v) for v in got.to_row()] == [type(v) for v in h.to_row()]
    assert await store.get_history(99) is None


async def test_a_history_commits_once_with_its_event_mark(store):
    h1 = history(5)
    assert await commit_history(store, "order-1", h1, [b"tag-added", b"tag-removed"]) is True
    assert await store.docs.is_processed(CONSUMER, "order-1")
    assert not await store.docs.is_processed(CONSUMER, "order-9")
    # A replay writes nothing: neither the history nor the events.
    assert await commit_history(store, "order-1", history(5, orders=1), [b"again"]) is False
    assert await store.get_history(5) == h1
    assert [e for _, e in await store.docs.outbox_pending(10)] == [b"tag-added", b"tag-removed"]
    # No history: only the events (and the event mark).
    assert await commit_history(store, "order-2", None, [b"second"]) is True
    assert await store.get_history(5) == h1
    assert await commit_history(store, "order-2", history(5, orders=0), []) is False
    assert await store.get_history(5) == h1
    # A new history replaces the old one.
    h2 = history(5, orders=3)
    assert await commit_history(store, "order-3", h2, []) is True
    assert await store.get_history(5) == h2
    assert [e for _, e in await store.docs.outbox_pending(10)] == [
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
    assert (await store.get_history(7)).to_row() == rows[7]

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
    # (mongomock, which has no $mod, filters each batch after reading it: fewer per batch)
    assert [r[0] for b in batches for r in b] == [1, 4, 7, 10, 13]
    assert all(1 <= len(b) <= 2 for b in batches)


# -- merges --


async def test_a_merge_moves_manual_tags_drops_the_history_and_is_remembered(store):
    await store.put_histories([history(1).to_row(), history(2).to_row()])
    await store.set_manual_tags([mtag(2, "vip", by="bob", at=7)], [])
    uow = UnitOfWork()
    store.move_manual_tags(uow, [mtag(1, "vip", by="bob", at=7)], [(2, "vip")])
    store.add_merge(uow, "m-b", "m-a", 2)
    uow.mark_processed(CONSUMER, "e-merge")
    await store.docs.commit(uow)
    assert await store.load_manual_tags() == [mtag(1, "vip", by="bob", at=7)]
    assert await store.get_history(2) is None and await store.get_history(1) is not None
    assert await store.load_merges() == {"m-b": "m-a"}
    scanned = [int(i) async for idx, _rows in store.scan_histories() for i in idx]
    assert scanned == [1]


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


async def test_manual_tags_load_by_member_then_tag(store):
    tags = [mtag(i, t) for i in (10, 2, 1) for t in ("vip", "a:b", "churn")]
    assert await store.set_manual_tags(tags, []) == 9
    got = await store.load_manual_tags()
    assert [(t.idx, t.tag) for t in got] == sorted((t.idx, t.tag) for t in tags)


async def test_manual_tag_changes_queue_their_events_with_them(store):
    await store.set_manual_tags([mtag(1, "vip")], [], [b"vip-gained"])
    await store.set_manual_tags([], [(1, "vip")], [b"vip-lost"])
    assert [e for _, e in await store.docs.outbox_pending(10)] == [b"vip-gained", b"vip-lost"]


# -- definitions and versions --


def tag(name: str, **kw) -> TagDefinition:
    return TagDefinition(name, kw.pop("kind", "rule"), **kw)


async def test_definitions(store):
    b = tag("b", group="money", display_name="Big spender", expression="aov >= 2.5", version=2)
    await store.put_tag(b, create=True)
    with pytest.raises(AlreadyExists):
        await store.put_tag(tag("b", display_name="other"), create=True)
    # Segments are another namespace.
    await store.put_segment(SegmentDefinition("b", 'has_tag("b")', count=3))
    await store.put_tag(tag("c", kind="manual"))
    await store.put_tag(tag("a", display_name="高价值", create_time=1, update_time=2**53))
    b2 = tag("b", display_name="Bigger spender", description="d")
    await store.put_tag(b2)

    assert await store.list_tags() == [
        tag("a", display_name="高价值", create_time=1, update_time=2**53),
        b2,
        tag("c", kind="manual"),
    ]
    assert await store.list_segments() == [SegmentDefinition("b", 'has_tag("b")', count=3)]


async def test_versions_newest_first(store):
    for v in (2, 1, 3):
        await store.add_tag_version("vip", TagVersion(v, f"rule {v}", v * 10))
    await store.add_tag_version("other", TagVersion(9, "x", 0))
    await store.add_tag_version("vip", TagVersion(2, "edited", 21))
    assert await store.tag_versions("vip") == [
        TagVersion(3, "rule 3", 30),
        TagVersion(2, "edited", 21),
        TagVersion(1, "rule 1", 10),
    ]
    assert await store.tag_versions("other") == [TagVersion(9, "x", 0)]
    assert await store.tag_versions("none") == []

    def seg(v: int) -> SegmentVersion:
        return SegmentVersion(v, 10 + v, v, 1, ["m-1", "m-2"][:v], [], f"run {v}", v)

    for v in (1, 3, 2):
        await store.add_segment_version("vip", seg(v), bytes([v]) * 3)
    await store.add_segment_version("vip-2", seg(4), b"")
    assert await store.segment_versions("vip") == [seg(3), seg(2), seg(1)]
    assert await store.segment_versions("vip-2") == [seg(4)]


# -- bitmaps --


async def test_bitmaps_replace_and_queue_events(store):
    await store.put_bitmaps("tag", {"vip": b"\x01\x02", "churn": b"\x03"}, [b"ev-1"])
    await store.put_bitmaps("segment", {"vip": b"segment"})
    await store.put_bitmaps("tag", {"vip": b"\x09", "new": b""}, [b"ev-2", b"ev-3"])
    await store.put_bitmaps("tag", {})

    assert await store.load_bitmaps("tag") == {"vip": b"\x09", "churn": b"\x03", "new": b""}
    assert await store.load_bitmaps("segment") == {"vip": b"segment"}
    assert await store.load_bitmaps("none") == {}
    assert [e for _, e in await store.docs.outbox_pending(10)] == [b"ev-1", b"ev-2", b"ev-3"]


async def test_bitmaps_delete_with_replace_atomically(store):
    await store.put_bitmaps("since", {"vip@1": b"a", "vip@2": b"b"})
    await store.put_bitmaps("tag", {"vip@1": b"tag"})
    await store.put_bitmaps("since", {"vip@3": b"c"}, [b"ev"], delete=["vip@1", "nope"])
    await store.put_bitmaps("since", {}, delete=["vip@2"])
    assert await store.load_bitmaps("since") == {"vip@3": b"c"}
    assert await store.load_bitmaps("tag") == {"vip@1": b"tag"}  # other kinds untouched
    assert [e for _, e in await store.docs.outbox_pending(10)] == [b"ev"]


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


async def test_concurrent_run_lock_has_one_holder(opener):
    a, b = await opener(), await opener()
    try:
        got = await asyncio.gather(
            *(s.acquire_run_lock(f"r{i}", 1_000, 100) for i, s in enumerate([a, b, a, b]))
        )
        assert len(set(got)) == 1 and got[0] in {"r0", "r1", "r2", "r3"}
    finally:
        await a.close()
        await b.close()


async def test_runs(store):
    for n in (3, 1, 5, 2, 4):
        await store.create_run(Run(f"run-{n:03d}"))
    await store.create_run(Run("run-004", state="done", members_total=12, errors=["x"]))

    got = await store.load_run("run-004")
    assert (got.id, got.state, got.members_total, got.errors) == ("run-004", "done", 12, ["x"])
    assert await store.load_run("run-999") is None

    async def ids(before: str, limit: int) -> list[str]:
        return [r.id for r in await store.recent_runs(before, limit)]

    assert await ids("", 2) == ["run-005", "run-004"]
    assert await ids("run-004", 2) == ["run-003", "run-002"]
    assert await ids("run-002", 10) == ["run-001"]
    assert await ids("run-001", 10) == []
    assert await ids("run-0035", 10) == ["run-003", "run-002", "run-001"]
    assert await ids("", 0) == []


async def test_run_updates_are_guarded_by_the_version_read(store):
    run = Run("r1", stage="score", duration_seconds=1.5)
    with pytest.raises(Conflict):  # none stored
        await store.update_run(Run("r0", revision=1))
    await store.create_run(run)
    assert (await store.load_run("r1")) == run
    elsewhere = await store.load_run("r1")
    run.stage = "write"
    await store.update_run(run)
    elsewhere.state = "cancelled"
    with pytest.raises(Conflict):  # read before the write above
        await store.update_run(elsewhere)
    assert (await store.load_run("r1")).state == "running"
    again = await store.load_run("r1")
    again.state = "cancelled"
    await store.update_run(again)
    run.stage = "done"
    with pytest.raises(Conflict):
        await store.update_run(run)
    assert await store.load_run("r1") == again
    assert (again.stage, again.state) == ("write", "cancelled")


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


# -- categories, cycles and state --


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


async def test_learned_cycles_and_untracked_categories(store):
    assert await store.learned_cycles() == {}
    assert await store.untracked_categories() == []
    await store.save_learned_cycles({3: 21.5, 0: 7.0})
    await store.save_untracked_categories(["z", "a"])
    assert await store.learned_cycles() == {3: 21.5, 0: 7.0}
    assert await store.untracked_categories() == ["z", "a"]
    await store.save_learned_cycles({})
    assert await store.learned_cycles() == {}


# -- outbox --


async def test_outbox_order_and_publishing(store):
    assert await store.docs.outbox_pending(10) == []
    await commit_history(store, "e-1", None, [b"a", b"b"])
    await store.put_bitmaps("tag", {"x": b"1"}, [b"c"])
    await commit_history(store, "e-2", history(1), [b"d"])

    pending = await store.docs.outbox_pending(10)
    assert [e for _, e in pending] == [b"a", b"b", b"c", b"d"]
    seqs = [s for s, _ in pending]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    assert await store.docs.outbox_pending(2) == pending[:2]
    assert await store.docs.outbox_pending(0) == []

    await store.docs.outbox_mark_published([])
    await store.docs.outbox_mark_published([seqs[0], seqs[2]])
    assert await store.docs.outbox_pending(10) == [pending[1], pending[3]]
    await store.docs.outbox_mark_published([seqs[1], seqs[3], seqs[3]])
    assert await store.docs.outbox_pending(10) == []

    # Sequence numbers keep increasing after everything was published.
    await commit_history(store, "e-3", None, [b"e"])
    [(seq, event)] = await store.docs.outbox_pending(10)
    assert event == b"e" and seq > seqs[-1]


async def test_a_write_cancelled_mid_flight_leaves_the_store_usable(store):
    """A client giving up mid-write must not leave a transaction open."""
    task = asyncio.ensure_future(store.create_run(Run("r1")))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.create_run(Run("r2"))
    assert (await store.load_run("r2")).id == "r2"
