"""The document store contract (services.runtime.documents): every test runs against
every engine. SQLite and the MongoDB engine on mongomock-motor always; a real MongoDB
when MONGODB_URI is set. A behaviour only one engine has is a bug."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid

import pytest
import pytest_asyncio

from services.runtime.documents import (
    IDEMPOTENCY,
    PROCESSED,
    TIMERS,
    Collection,
    Conflict,
    DuplicateKey,
    IdempotencyRecord,
    Index,
    Schema,
    Timer,
    UnitOfWork,
    open_document_store,
)

OPEN = {"remaining": {"$gt": 0}}
MEMBERS = Collection(
    "members",
    indexes=(Index(("store_id", "_id")), Index(("phone",), unique=True), Index(("-points",))),
    fields=("tier",),
)
LOTS = Collection(
    "lots",
    indexes=(
        Index(("member_id", "expires_at"), partial=OPEN),
        Index(("code",), unique=True, partial={"open": True}),
    ),
)
ROWS = Collection("rows", key_type=int, fields=("group",), blob="bits")
SCHEMA = Schema("contract", (MEMBERS, LOTS, ROWS), sequences=("orders", "batches"))


@pytest.fixture(params=["sqlite", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def backend(request) -> str:
    return request.param


@pytest_asyncio.fixture
async def open_store(backend: str, tmp_path):
    """Opens a store on the same database each time it is called (to reopen with
    another schema); closes them all after the test."""
    opened = []
    name = f"pond_contract_{uuid.uuid4().hex[:16]}"
    database = None
    if backend == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        database = AsyncMongoMockClient()[name]
    elif backend == "mongodb":
        uri = os.environ.get("MONGODB_URI", "")
        if not uri:
            pytest.skip("MONGODB_URI is not set")
        from services.runtime.documents_mongo import open_database

        database = open_database(uri, name)

    async def open_(schema: Schema = SCHEMA):
        if backend == "sqlite":
            store = await open_document_store(schema, sqlite_path=str(tmp_path / "docs.db"))
        else:
            store = await open_document_store(schema, mongo_database=database)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()
    if backend == "mongodb":
        await database.client.drop_database(name)
        database.client.close()


@pytest_asyncio.fixture
async def store(open_store):
    return await open_store()


def member(mid: str, store_id: str = "s1", points: int = 0, **fields) -> dict:
    return {"_id": mid, "store_id": store_id, "phone": f"p-{mid}", "points": points, **fields}


async def commit(store, build) -> UnitOfWork:
    uow = UnitOfWork()
    build(uow)
    await store.commit(uow)
    return uow


async def ids(store, collection: str, where=None, **kw) -> list:
    return [d["_id"] for d in await store.find(collection, where, **kw)]


# -- insert, replace, put, delete --


async def test_insert_then_get_returns_the_document_at_version_1(store):
    doc = member("m1", tags=["a", "b"], profile={"name": "Li", "age": 30}, ratio=0.5, ok=True)
    await commit(store, lambda u: u.insert("members", doc))
    assert doc["_v"] == 1
    got = await store.get("members", "m1")
    assert got == doc
    assert await store.get("members", "nobody") is None


async def test_insert_of_a_taken_id_is_refused_and_writes_nothing(store):
    await commit(store, lambda u: u.insert("members", member("m1")))
    uow = UnitOfWork()
    uow.insert("members", member("m2"))
    uow.insert("members", member("m1", phone="other"))
    with pytest.raises(DuplicateKey) as err:
        await store.commit(uow)
    assert (err.value.collection, err.value.key, err.value.fields) == ("members", "m1", ("_id",))
    assert await store.get("members", "m2") is None


async def test_insert_with_a_taken_unique_value_names_the_index(store):
    await commit(store, lambda u: u.insert("members", member("m1", phone="138")))
    with pytest.raises(DuplicateKey) as err:
        await commit(store, lambda u: u.insert("members", member("m2", phone="138")))
    assert (err.value.key, err.value.fields) == ("m2", ("phone",))
    assert await store.get("members", "m2") is None


async def test_a_partial_unique_index_covers_only_the_documents_it_matches(store):
    def lot(lid: str, code: str, is_open: bool) -> dict:
        return {"_id": lid, "member_id": "m1", "code": code, "open": is_open, "remaining": 1,
                "expires_at": 10}

    await commit(store, lambda u: (u.insert("lots", lot("l1", "C", False)),
                                   u.insert("lots", lot("l2", "C", False)),
                                   u.insert("lots", lot("l3", "C", True))))
    with pytest.raises(DuplicateKey) as err:
        await commit(store, lambda u: u.insert("lots", lot("l4", "C", True)))
    assert err.value.fields == ("code",)
    closed = await store.get("lots", "l1")
    closed["open"] = True
    with pytest.raises(DuplicateKey):
        await commit(store, lambda u: u.replace("lots", closed))
    # A closed lot needs no code at all; an open one does.
    await commit(store, lambda u: u.insert("lots", {"_id": "l5", "open": False}))
    with pytest.raises(ValueError):
        await commit(store, lambda u: u.insert("lots", {"_id": "l6", "open": True}))


async def test_documents_the_engines_cannot_both_keep_are_refused(store):
    bad = [
        ("members", {"store_id": "s1", "phone": "1"}),  # no _id
        ("members", {"_id": 1, "phone": "1"}),  # an int key in a str-keyed collection
        ("rows", {"_id": "1"}),
        ("members", member("m1", phone=None)),  # a unique field missing
        ("members", member("m1", tier=["gold"])),  # a queryable field holding a list
        ("rows", {"_id": 1, "bits": "not bytes"}),
    ]
    for collection, doc in bad:
        with pytest.raises(ValueError):
            await commit(store, lambda u, c=collection, d=doc: u.insert(c, d))
    assert await store.count("members") == 0


async def test_replace_is_guarded_by_the_version_it_read(store):
    await commit(store, lambda u: u.insert("members", member("m1", points=1)))
    first = await store.get("members", "m1")
    second = await store.get("members", "m1")
    first["points"] = 2
    await commit(store, lambda u: u.replace("members", first))
    assert first["_v"] == 2
    assert (await store.get("members", "m1"))["points"] == 2
    second["points"] = 3
    with pytest.raises(Conflict) as err:
        await commit(store, lambda u: u.replace("members", second))
    assert (err.value.collection, err.value.key) == ("members", "m1")
    assert second["_v"] == 1
    assert (await store.get("members", "m1"))["points"] == 2


async def test_replace_of_a_missing_document_conflicts(store):
    ghost = {**member("m1"), "_v": 1}
    with pytest.raises(Conflict):
        await commit(store, lambda u: u.replace("members", ghost))
    with pytest.raises(ValueError):  # no version to guard by
        await commit(store, lambda u: u.replace("members", member("m1")))
    assert await store.get("members", "m1") is None


async def test_replace_drops_fields_the_document_no_longer_has(store):
    await commit(store, lambda u: u.insert("members", member("m1", tier="gold", note="x")))
    doc = await store.get("members", "m1")
    del doc["note"], doc["tier"]
    await commit(store, lambda u: u.replace("members", doc))
    got = await store.get("members", "m1")
    assert "note" not in got and "tier" not in got
    assert await ids(store, "members", {"tier": "gold"}) == []


async def test_put_inserts_or_replaces_unguarded(store):
    doc = member("m1", points=1)
    await commit(store, lambda u: u.put("members", doc))
    assert doc["_v"] == 1
    stale = {**doc, "_v": 1, "points": 5}
    await commit(store, lambda u: u.put("members", stale))
    assert stale["_v"] == 2
    got = await store.get("members", "m1")
    assert (got["points"], got["_v"]) == (5, 2)
    with pytest.raises(DuplicateKey) as err:
        await commit(store, lambda u: u.put("members", member("m2", phone=doc["phone"])))
    assert err.value.fields == ("phone",)


async def test_put_many_writes_each_and_sets_every_version(store):
    await commit(store, lambda u: u.insert("members", member("m2")))
    docs = [member(f"m{i}", points=i) for i in range(1, 5)]
    await commit(store, lambda u: u.put_many("members", docs))
    assert [d["_v"] for d in docs] == [1, 2, 1, 1]
    got = await store.get_many("members", ["m4", "nobody", "m1", "m4"])
    assert [(d["_id"], d["points"]) for d in got] == [("m4", 4), ("m1", 1)]
    assert await store.get_many("members", []) == []


async def test_get_many_finds_many_keys(store):
    docs = [{"_id": i, "group": i % 2} for i in range(1, 201)]
    await commit(store, lambda u: u.put_many("rows", docs))
    got = await store.get_many("rows", list(range(200, 0, -1)))
    assert [d["_id"] for d in got] == list(range(200, 0, -1))


async def test_delete_guarded_and_unguarded(store):
    await commit(store, lambda u: (u.insert("members", member("m1")),
                                   u.insert("members", member("m2"))))
    with pytest.raises(Conflict):
        await commit(store, lambda u: u.delete("members", "m1", version=7))
    assert await store.get("members", "m1") is not None
    await commit(store, lambda u: u.delete("members", "m1", version=1))
    assert await store.get("members", "m1") is None
    with pytest.raises(Conflict):
        await commit(store, lambda u: u.delete("members", "m1", version=1))
    await commit(store, lambda u: (u.delete("members", "m2"), u.delete("members", "nobody")))
    assert await store.count("members") == 0


async def test_an_empty_unit_of_work_commits_nothing(store):
    await store.commit(UnitOfWork())
    assert await store.outbox_pending(10) == []


async def test_concurrent_guarded_writes_let_one_through(store):
    await commit(store, lambda u: u.insert("members", member("m1")))
    a, b = await store.get("members", "m1"), await store.get("members", "m1")
    a["points"], b["points"] = 1, 2
    results = await asyncio.gather(
        commit(store, lambda u: u.replace("members", a)),
        commit(store, lambda u: u.replace("members", b)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert (await store.get("members", "m1"))["_v"] == 2


# -- queries --


@pytest_asyncio.fixture
async def people(store):
    docs = [
        member("a", "s1", 10, tier="gold"),
        member("b", "s1", 20, tier="silver"),
        member("c", "s2", 20, tier=None),
        member("d", "s2", 30),  # no tier at all
        member("e", "s3", -5, tier="gold"),
    ]
    await commit(store, lambda u: u.put_many("members", docs))
    return store


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"store_id": "s2"}, ["c", "d"]),
        ({"tier": None}, ["c", "d"]),
        ({"tier": {"$ne": "gold"}}, ["b", "c", "d"]),
        ({"tier": {"$ne": None}}, ["a", "b", "e"]),
        ({"points": {"$in": [20, 30]}}, ["b", "c", "d"]),
        ({"tier": {"$in": ["silver", None]}}, ["b", "c", "d"]),
        ({"points": {"$in": []}}, []),
        ({"tier": {"$nin": ["gold"]}}, ["b", "c", "d"]),
        ({"tier": {"$nin": ["gold", None]}}, ["b"]),
        ({"points": {"$nin": []}}, ["a", "b", "c", "d", "e"]),
        ({"points": {"$lt": 20}}, ["a", "e"]),
        ({"points": {"$lte": 20}}, ["a", "b", "c", "e"]),
        ({"points": {"$gt": 20}}, ["d"]),
        ({"points": {"$gte": 10, "$lt": 30}}, ["a", "b", "c"]),
        ({"tier": {"$gte": "h"}}, ["b"]),
        ({"store_id": "s1", "points": {"$gt": 10}}, ["b"]),
        ({"_id": {"$in": ["e", "a", "zz"]}}, ["a", "e"]),
        ({"_id": {"$gt": "c"}}, ["d", "e"]),
        ({}, ["a", "b", "c", "d", "e"]),
        (None, ["a", "b", "c", "d", "e"]),
    ],
)
async def test_find_with_each_operator(people, where, expected):
    assert await ids(people, "members", where) == expected
    assert await people.count("members", where) == len(expected)


async def test_find_orders_ties_by_id_and_limits(people):
    assert await ids(people, "members", order=("points",)) == ["e", "a", "b", "c", "d"]
    assert await ids(people, "members", order=("-points",)) == ["d", "b", "c", "a", "e"]
    assert await ids(people, "members", order=("-points",), limit=2) == ["d", "b"]
    assert await ids(people, "members", order=("store_id", "-points")) == [
        "b", "a", "d", "c", "e"
    ]
    # None and missing sort first, ascending; last, descending.
    assert await ids(people, "members", order=("tier",)) == ["c", "d", "a", "e", "b"]
    assert await ids(people, "members", order=("-tier",)) == ["b", "a", "e", "c", "d"]
    assert await ids(people, "members", order=("-_id",)) == ["e", "d", "c", "b", "a"]
    assert await ids(people, "members", {"store_id": "s1"}, limit=1) == ["a"]
    assert await ids(people, "members", limit=0) == []


async def test_finds_with_a_limit_seeking_an_index(people):
    # Served on the event loop on SQLite: the same answers as any other find.
    assert await ids(people, "members", {"store_id": "s2"}, limit=10) == ["c", "d"]
    assert await ids(people, "members", {"_id": "b"}, limit=1) == ["b"]
    assert await ids(people, "members", {"store_id": {"$in": ["s3", "s1"]}}, limit=5,
                     order=("-points",)) == ["b", "a", "e"]


async def test_a_partial_index_query_finds_what_it_matches(store):
    lots = [
        {"_id": "l1", "member_id": "m1", "remaining": 0, "expires_at": 5},
        {"_id": "l2", "member_id": "m1", "remaining": 3, "expires_at": 9},
        {"_id": "l3", "member_id": "m1", "remaining": 2, "expires_at": 7},
        {"_id": "l4", "member_id": "m2", "remaining": 2, "expires_at": 1},
    ]
    await commit(store, lambda u: u.put_many("lots", lots))
    where = {"member_id": "m1", **OPEN}
    assert await ids(store, "lots", where, order=("expires_at",), limit=10) == ["l3", "l2"]
    assert await ids(store, "lots", {"remaining": {"$gt": 1}}) == ["l2", "l3", "l4"]


async def test_repeated_finds_of_one_shape_answer_for_their_own_values(store):
    """The same query with other values (SQLite keeps a plan per query shape): the
    values of a partial index's field decide whether the index applies, so finds with
    open True and open False, 1 and True, must each see their own documents."""
    lots = [
        {"_id": "c1", "code": "A", "open": True, "member_id": "m1", "remaining": 1},
        {"_id": "c2", "code": "A", "open": False, "member_id": "m1", "remaining": 0},
        {"_id": "c3", "code": "B", "open": False, "member_id": "m2", "remaining": 2},
        {"_id": "c4", "code": "C", "open": 1, "member_id": "m2", "remaining": 3},
    ]
    await commit(store, lambda u: u.put_many("lots", lots))
    for _ in range(2):  # the second round answers from kept plans
        assert await ids(store, "lots", {"code": "A", "open": True}, limit=5) == ["c1"]
        assert await ids(store, "lots", {"code": "A", "open": False}, limit=5) == ["c2"]
        assert await ids(store, "lots", {"code": "B", "open": False}, limit=5) == ["c3"]
        assert await ids(store, "lots", {"member_id": "m2"}, limit=5) == ["c3", "c4"]
        assert await ids(store, "lots", {"member_id": "m1"}, limit=1) == ["c1"]
        assert await ids(store, "lots", {"member_id": "m1"}, limit=0) == []
        assert await ids(store, "lots", {"member_id": "m1", "remaining": 0}) == ["c2"]
        assert await ids(store, "lots", {"member_id": "m2", "remaining": {"$gt": 2}}) == ["c4"]
        assert await ids(store, "lots", {"member_id": None}) == []
        assert await ids(store, "lots", {"member_id": "m2"}, order=("-remaining",)) == [
            "c4", "c3"]


@pytest.mark.parametrize(
    "where",
    [
        {"nickname": "x"},  # not queryable
        {"points": {"$regex": "^1"}},
        {"$or": [{"points": 1}]},
        {"points": {"$exists": True}},
        {"points": {"$eq": 1}},
        {"profile": {"name": "Li"}},  # a sub-document
        {"tags": ["a"]},
        {"points": {"$in": 5}},
        {"points": {"$lt": None}},
        {"points": {}},
        {"points": {"$in": [[1]]}},
    ],
)
async def test_queries_outside_the_subset_are_refused(store, where):
    with pytest.raises(ValueError):
        await store.find("members", where)
    with pytest.raises(ValueError):
        await store.count("members", where)
    with pytest.raises(ValueError):
        async for _ in store.scan("members", where):
            pass


async def test_orders_and_limits_outside_the_subset_are_refused(store):
    with pytest.raises(ValueError):
        await store.find("members", order=("nickname",))
    with pytest.raises(ValueError):
        await store.find("members", limit=-1)
    with pytest.raises(KeyError):
        await store.find("nothing")


# -- scans and blobs --


async def collect(store, collection="rows", **kw) -> list[list[dict]]:
    return [batch async for batch in store.scan(collection, **kw)]


async def test_scan_pages_through_int_keys_in_batches(store):
    rows = [{"_id": i, "group": i % 2, "note": f"n{i}"} for i in range(25, 0, -1)]
    await commit(store, lambda u: u.put_many("rows", rows))
    batches = await collect(store, batch=10)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [d["_id"] for b in batches for d in b] == list(range(1, 26))
    assert batches[0][0] == {"_id": 1, "_v": 1, "group": 1, "note": "n1"}
    odd = await collect(store, where={"group": 1}, batch=4)
    assert [d["_id"] for b in odd for d in b] == list(range(1, 26, 2))
    assert await collect(store, where={"group": 7}) == []


async def test_scan_partitions_int_keys_by_remainder(store):
    await commit(store, lambda u: u.put_many("rows", [{"_id": i} for i in range(1, 31)]))
    seen = []
    for i in range(3):
        keys = [d["_id"] for b in await collect(store, batch=4, partition=(i, 3)) for d in b]
        assert keys and all(k % 3 == i for k in keys)
        assert keys == sorted(keys)
        seen += keys
    assert sorted(seen) == list(range(1, 31))
    with pytest.raises(ValueError):
        await collect(store, "members", partition=(0, 2))
    with pytest.raises(ValueError):
        await collect(store, partition=(3, 3))


async def test_scan_fields_limit_what_each_document_carries(store):
    rows = [{"_id": i, "group": i % 2, "note": f"n{i}", "bits": bytes([i])} for i in (1, 2)]
    await commit(store, lambda u: u.put_many("rows", rows))
    assert await collect(store, fields=["group"]) == [[{"_id": 1, "group": 1},
                                                       {"_id": 2, "group": 0}]]
    assert await collect(store, fields=["note", "bits", "absent"]) == [
        [{"_id": 1, "note": "n1", "bits": b"\x01"}, {"_id": 2, "note": "n2", "bits": b"\x02"}]
    ]


async def test_scan_tolerates_writes_between_batches(store):
    await commit(store, lambda u: u.put_many("rows", [{"_id": i} for i in range(1, 7)]))
    seen = []
    async for batch in store.scan("rows", batch=2):
        seen += [d["_id"] for d in batch]
        if seen == [1, 2]:
            await commit(store, lambda u: (u.delete("rows", 3), u.insert("rows", {"_id": 9})))
    assert seen == [1, 2, 4, 5, 6, 9]


async def test_blob_round_trip(store):
    bits = bytes(range(256)) * 4
    await commit(store, lambda u: (u.insert("rows", {"_id": 1, "group": 1, "bits": bits}),
                                   u.insert("rows", {"_id": 2, "group": 1}),
                                   u.insert("rows", {"_id": 3, "bits": None})))
    got = await store.get("rows", 1)
    assert got == {"_id": 1, "_v": 1, "group": 1, "bits": bits}
    assert "bits" not in await store.get("rows", 2)
    assert "bits" not in await store.get("rows", 3)
    assert (await store.find("rows", {"group": 1}))[0]["bits"] == bits
    assert (await store.get_many("rows", [1]))[0]["bits"] == bits
    got["bits"] = b"\x00\x01"
    await commit(store, lambda u: u.replace("rows", got))
    assert (await store.get("rows", 1))["bits"] == b"\x00\x01"


# -- sequences and the runtime's records --


async def test_next_ids_counts_per_sequence(store):
    assert await store.next_ids("orders") == [1]
    assert await store.next_ids("orders", 3) == [2, 3, 4]
    assert await store.next_ids("batches", 2) == [1, 2]
    assert await store.next_ids("orders", 0) == []
    with pytest.raises(ValueError):
        await store.next_ids("undeclared")


async def test_outbox_holds_events_until_published(store):
    await commit(store, lambda u: u.emit(b"e1", b"e2"))
    await commit(store, lambda u: (u.insert("members", member("m1")), u.emit(b"e3")))
    pending = await store.outbox_pending(10)
    assert [e for _, e in pending] == [b"e1", b"e2", b"e3"]
    seqs = [s for s, _ in pending]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert await store.outbox_pending(2) == pending[:2]
    await store.outbox_mark_published(seqs[:2])
    assert await store.outbox_pending(10) == pending[2:]
    await store.outbox_mark_published([])


async def test_idempotency_records_are_remembered_once(store):
    rec = IdempotencyRecord("member.Earn", "k1", "fp", b"\x00response", expires_at=100)
    await commit(store, lambda u: (u.remember(rec), u.insert("members", member("m1"))))
    assert await store.recall("member.Earn", "k1") == rec
    assert await store.recall("member.Earn", "k2") is None
    assert await store.recall("member.Other", "k1") is None
    again = IdempotencyRecord("member.Earn", "k1", "fp2", b"second", expires_at=200)
    with pytest.raises(DuplicateKey) as err:
        await commit(store, lambda u: (u.insert("members", member("m2")), u.remember(again)))
    assert (err.value.collection, err.value.key) == (IDEMPOTENCY, "k1")
    assert await store.get("members", "m2") is None
    assert await store.recall("member.Earn", "k1") == rec


async def test_processed_marks_refuse_a_second_application(store):
    await commit(store, lambda u: u.mark_processed("tagging", "ev-1", at=5))
    assert await store.is_processed("tagging", "ev-1")
    assert not await store.is_processed("tagging", "ev-2")
    assert not await store.is_processed("other", "ev-1")
    with pytest.raises(DuplicateKey) as err:
        await commit(store, lambda u: (u.insert("members", member("m1")), u.emit(b"e"),
                                       u.mark_processed("tagging", "ev-1")))
    assert (err.value.collection, err.value.key) == (PROCESSED, "ev-1")
    assert await store.get("members", "m1") is None
    assert await store.outbox_pending(10) == []
    await commit(store, lambda u: u.mark_processed("other", "ev-1"))


async def test_timers_set_move_fire_and_cancel(store):
    await commit(store, lambda u: (u.set_timer(Timer("t1", "expire", 100, {"lot": "l1"})),
                                   u.set_timer(Timer("t2", "remind", 50)),
                                   u.set_timer(Timer("t3", "remind", 500))))
    due = await store.due_timers(now=100, limit=10)
    assert [(t.id, t.kind, t.due_at) for t in due] == [("t2", "remind", 50), ("t1", "expire", 100)]
    assert due[1].payload == {"lot": "l1"}
    assert [t.id for t in await store.due_timers(now=100, limit=1)] == ["t2"]
    t2, t1 = due
    # Moving a timer changes its version: firing it as read before is refused.
    await commit(store, lambda u: u.set_timer(Timer("t1", "expire", 300, {"lot": "l1"})))
    with pytest.raises(Conflict) as err:
        await commit(store, lambda u: (u.insert("members", member("m1")), u.fire(t1)))
    assert (err.value.collection, err.value.key) == (TIMERS, "t1")
    assert await store.get("members", "m1") is None
    await commit(store, lambda u: u.fire(t2))
    with pytest.raises(Conflict):
        await commit(store, lambda u: u.fire(t2))
    assert [t.id for t in await store.due_timers(now=1000, limit=10)] == ["t1", "t3"]
    await commit(store, lambda u: (u.cancel_timer("t3"), u.cancel_timer("never-set")))
    assert [t.id for t in await store.due_timers(now=1000, limit=10)] == ["t1"]


async def test_a_fired_timer_can_be_set_again_in_the_same_unit_of_work(store):
    await commit(store, lambda u: u.set_timer(Timer("daily", "report", 10)))
    (t,) = await store.due_timers(now=10, limit=10)
    await commit(store, lambda u: (u.fire(t), u.set_timer(Timer("daily", "report", 20))))
    (again,) = await store.due_timers(now=20, limit=10)
    assert again.due_at == 20
    with pytest.raises(Conflict):
        await commit(store, lambda u: u.fire(t))


async def test_prune_deletes_expired_records_and_old_marks(store):
    old = IdempotencyRecord("s", "old", "fp", b"r", expires_at=100)
    new = IdempotencyRecord("s", "new", "fp", b"r", expires_at=300)
    await commit(store, lambda u: (u.remember(old), u.mark_processed("c", "e1", at=10)))
    await commit(store, lambda u: (u.remember(new), u.mark_processed("c", "e2", at=50)))
    assert await store.prune(now=200, processed_before=20) == 2
    assert await store.recall("s", "old") is None
    assert await store.recall("s", "new") == new
    assert not await store.is_processed("c", "e1")
    assert await store.is_processed("c", "e2")
    assert await store.prune(now=200, processed_before=20) == 0


# -- atomicity --


def _failing_last(kind: str):
    if kind == "duplicate id":
        return lambda u: u.insert("members", member("old", phone="new-phone"))
    if kind == "duplicate unique":
        return lambda u: u.insert("members", member("x", phone="p-old"))
    if kind == "stale replace":
        return lambda u: u.replace("members", {**member("old"), "_v": 9})
    if kind == "stale delete":
        return lambda u: u.delete("members", "old", version=9)
    if kind == "timer":
        return lambda u: u.fire(Timer("gone", "k", 1, version=1))
    if kind == "idempotency":
        return lambda u: u.remember(IdempotencyRecord("s", "taken", "f", b"", 10))
    return lambda u: u.mark_processed("c", "taken")


@pytest.mark.parametrize(
    "kind",
    ["duplicate id", "duplicate unique", "stale replace", "stale delete", "timer",
     "idempotency", "processed"],
)
async def test_a_refused_unit_of_work_writes_nothing(store, kind):
    await commit(store, lambda u: (
        u.insert("members", member("old", points=1)),
        u.insert("members", member("gone")),
        u.set_timer(Timer("t", "k", 5)),
        u.remember(IdempotencyRecord("s", "taken", "f", b"", 10)),
        u.mark_processed("c", "taken"),
    ))
    old = await store.get("members", "old")
    changed = {**old, "points": 2}
    uow = UnitOfWork()
    uow.insert("members", member("new"))
    uow.replace("members", changed)
    uow.put("members", member("put"))
    uow.put_many("rows", [{"_id": 1}, {"_id": 2}])
    uow.delete("members", "gone")
    uow.emit(b"event")
    uow.remember(IdempotencyRecord("s", "k", "f", b"first", 10))
    uow.mark_processed("c", "e")
    uow.set_timer(Timer("t2", "k", 5))
    uow.cancel_timer("t")
    _failing_last(kind)(uow)
    with pytest.raises((Conflict, DuplicateKey)):
        await store.commit(uow)
    assert await store.get("members", "old") == old
    assert changed["_v"] == old["_v"]
    assert await ids(store, "members") == ["gone", "old"]
    assert await store.count("rows") == 0
    assert await store.outbox_pending(10) == []
    assert await store.recall("s", "k") is None
    assert not await store.is_processed("c", "e")
    assert [t.id for t in await store.due_timers(now=10, limit=10)] == ["t"]


# -- schema evolution --


async def test_reopening_with_a_new_index_field_finds_existing_documents(open_store):
    v1 = Schema("contract", (Collection("things", fields=("a",)),))
    store = await open_store(v1)
    docs = [{"_id": f"t{i}", "a": i, "b": f"x{i % 2}", "c": i * 10} for i in range(5)]
    await commit(store, lambda u: u.put_many("things", docs))
    with pytest.raises(ValueError):
        await store.find("things", {"b": "x1"})
    await store.close()

    v2 = Schema("contract", (Collection("things", indexes=(Index(("b", "-c")),)),))
    store = await open_store(v2)
    assert await ids(store, "things", {"b": "x1"}, order=("-c",)) == ["t3", "t1"]
    with pytest.raises(ValueError):  # no longer queryable
        await store.find("things", {"a": 1})
    doc = await store.get("things", "t1")
    doc["b"] = "x0"
    await commit(store, lambda u: u.replace("things", doc))
    await store.close()

    # Back to v1 and on again: the dropped field comes back filled from the documents.
    await (await open_store(v1)).close()
    store = await open_store(v2)
    assert await ids(store, "things", {"b": "x0"}) == ["t0", "t1", "t2", "t4"]
    store = await open_store(Schema("contract", (Collection("things", fields=("a", "c")),)))
    assert await ids(store, "things", {"a": {"$gte": 3}}, order=("-c",)) == ["t4", "t3"]


async def test_a_new_unique_index_over_repeating_values_fails_the_open(open_store):
    store = await open_store(Schema("contract", (Collection("things"),)))
    repeating = [{"_id": "a", "k": 1}, {"_id": "b", "k": 1}]
    await commit(store, lambda u: u.put_many("things", repeating))
    await store.close()
    unique = Collection("things", indexes=(Index(("k",), unique=True),))
    with pytest.raises(ValueError):
        await open_store(Schema("contract", (unique,)))


async def test_schemas_the_engines_cannot_both_hold_are_refused(open_store):
    for bad in [
        Schema("contract", (Collection("_things"),)),
        Schema("contract", (Collection("things", fields=("a.b",)),)),
        Schema("contract", (Collection("things", fields=("x",), blob="x"),)),
        Schema("contract", (Collection("t", indexes=(Index(("a",), partial={"b": {"$ne": 1}}),)),)),
        Schema("contract", (Collection("t"), Collection("t"))),
    ]:
        with pytest.raises(ValueError):
            await open_store(bad)


async def test_the_sqlite_file_is_the_owners_only(backend, open_store, tmp_path):
    if backend != "sqlite":
        pytest.skip("a file mode is SQLite's")
    await open_store()
    mode = stat.S_IMODE(os.stat(tmp_path / "docs.db").st_mode)
    assert mode == 0o600


# -- reads see every commit, wherever it was made --


async def test_a_get_sees_what_another_store_on_the_database_committed(open_store):
    """The SQLite engine keeps rows it has read until anything is committed; a
    commit through another store (another replica) must end that at once."""
    mine, theirs = await open_store(), await open_store()
    assert await mine.get("members", "m1") is None  # an absence is kept too
    await commit(theirs, lambda u: u.insert("members", member("m1", points=1)))
    first = await mine.get("members", "m1")
    assert first is not None and first["points"] == 1
    assert (await mine.get("members", "m1"))["points"] == 1  # read again, unchanged
    await commit(theirs, lambda u: u.replace("members", {**first, "points": 2}))
    assert (await mine.get("members", "m1"))["points"] == 2
    await commit(theirs, lambda u: u.delete("members", "m1"))
    assert await mine.get("members", "m1") is None


async def test_a_get_returns_a_document_of_its_own(store):
    """Rows kept for gets are decoded for each caller: changing one caller's document
    changes no one else's."""
    await commit(store, lambda u: u.insert("members", member("m1", tags=["a"])))
    first = await store.get("members", "m1")
    first["tags"].append("changed")
    first["points"] = 99
    again = await store.get("members", "m1")
    assert again["tags"] == ["a"] and again["points"] == 0


_OTHER_PROCESS_WRITE = """
import asyncio, sys
from services.runtime.documents import UnitOfWork, open_document_store
from tests.contract.test_documents import SCHEMA

async def main():
    store = await open_document_store(SCHEMA, sqlite_path=sys.argv[1])
    doc = await store.get("members", "m1")
    uow = UnitOfWork()
    uow.replace("members", {**doc, "points": int(sys.argv[2])})
    await store.commit(uow)
    await store.close()

asyncio.run(main())
"""


async def test_a_get_sees_what_another_process_committed(backend, store, tmp_path):
    if backend != "sqlite":
        pytest.skip("another process on one file is SQLite's")
    import sys
    from pathlib import Path

    await commit(store, lambda u: u.insert("members", member("m1")))
    before = 0
    for points in (5, 6):
        assert (await store.get("members", "m1"))["points"] == before  # now kept
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _OTHER_PROCESS_WRITE, str(tmp_path / "docs.db"), str(points),
            cwd=Path(__file__).resolve().parents[2],
        )
        assert await asyncio.wait_for(writer.wait(), 60) == 0
        assert (await store.get("members", "m1"))["points"] == points
        before = points


async def test_a_replace_moves_exactly_the_queryable_fields_that_changed(store):
    """SQLite sets only the changed fields' columns on a replace (documents_sqlite_tables
    Table.replacing): every field still finds the document by its new value only."""
    await commit(store, lambda u: u.insert("members", member("m1", "s1", points=1, tier="gold")))
    doc = await store.get("members", "m1")
    await commit(store, lambda u: u.replace("members", {**doc, "points": 2}))  # one index
    assert await ids(store, "members", {"store_id": "s1"}) == ["m1"]
    assert await ids(store, "members", {"points": 2}) == ["m1"]
    assert await ids(store, "members", {"points": 1}) == []
    doc = await store.get("members", "m1")
    await commit(store, lambda u: u.replace("members", {**doc, "store_id": "s2", "tier": None}))
    assert await ids(store, "members", {"store_id": "s1"}) == []
    assert await ids(store, "members", {"store_id": "s2"}) == ["m1"]
    assert await ids(store, "members", {"tier": None}) == ["m1"]
    assert await ids(store, "members", {"tier": "gold"}) == []
    doc = await store.get("members", "m1")
    await commit(store, lambda u: u.replace("members", {**doc, "tier": True}))
    doc = await store.get("members", "m1")
    assert doc["tier"] is True and doc["points"] == 2 and doc["_v"] == 4
    await commit(store, lambda u: u.replace("members", {**doc, "tier": "1"}))
    assert await ids(store, "members", {"tier": "1"}) == ["m1"]
    assert await ids(store, "members", {"tier": True}) == []


async def test_may_exist_is_false_only_for_a_key_that_is_not_there(open_store):
    """A hint that spares a read: False must mean what a get would find (None); an
    engine that keeps no filter answers True."""
    filtered = Collection("counters", key_filter=True)
    store = await open_store(Schema("contract", (filtered, Collection("plain"))))
    await commit(store, lambda u: (u.insert("counters", {"_id": "a", "n": 1}),
                                   u.insert("plain", {"_id": "a"})))
    for collection in ("counters", "plain"):
        for key in ("a", "b", "c", "never"):
            if not await store.may_exist(collection, key):
                assert await store.get(collection, key) is None, (collection, key)
        assert await store.may_exist(collection, "a")
    await commit(store, lambda u: u.insert("counters", {"_id": "b", "n": 1}))
    assert await store.may_exist("counters", "b")
    await commit(store, lambda u: u.delete("counters", "b"))
    assert await store.get("counters", "b") is None  # (may_exist may still say True)
    if store.engine == "sqlite":
        assert not await store.may_exist("counters", "never")
        assert await store.may_exist("plain", "never")  # no filter declared
