"""The two document engines side by side (property): random units of work and queries
applied to SQLite and to the MongoDB engine on mongomock give the same outcome at each
step (result, or error with its collection, key and index) and the same documents."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mongomock_motor import AsyncMongoMockClient

from services.runtime.documents import (
    Collection,
    Conflict,
    DuplicateKey,
    Index,
    Schema,
    UnitOfWork,
    open_document_store,
)

SCHEMA = Schema(
    "engines",
    (
        Collection(
            "people",
            indexes=(
                Index(("store", "-points")),
                Index(("phone",), unique=True, partial={"active": True}),
            ),
            fields=("tier",),
        ),
    ),
)
KEYS = ["a", "b", "c", "d"]

fields = st.fixed_dictionaries(
    {
        "store": st.sampled_from(["s1", "s2"]),
        "points": st.integers(-3, 3),
        "active": st.booleans(),
        "phone": st.sampled_from(["p1", "p2"]),
    },
    optional={"tier": st.sampled_from([None, "gold", "silver"]), "note": st.text(max_size=3)},
)
write = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(KEYS), fields),
    st.tuples(st.just("replace"), st.sampled_from(KEYS), fields, st.integers(-1, 1)),
    st.tuples(st.just("put"), st.sampled_from(KEYS), fields),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.sampled_from([None, -1, 0])),
)
condition = st.one_of(
    st.fixed_dictionaries({"store": st.sampled_from(["s1", "s2"])}),
    st.fixed_dictionaries({"points": st.fixed_dictionaries(
        {}, optional={op: st.integers(-3, 3) for op in ("$lt", "$lte", "$gt", "$gte")})
        .filter(bool)}),
    st.fixed_dictionaries({"tier": st.sampled_from(
        [None, "gold", {"$ne": "gold"}, {"$in": ["silver", None]}, {"$nin": [None]}])}),
    st.fixed_dictionaries({"_id": st.fixed_dictionaries(
        {"$in": st.lists(st.sampled_from(KEYS), max_size=3)})}),
)
query = st.tuples(
    st.just("find"),
    st.dictionaries(st.sampled_from(["x"]), condition, max_size=1).map(
        lambda d: d.get("x", {})
    ),
    st.sampled_from([("_id",), ("points",), ("-points",), ("tier", "-points"), ("-store",)]),
    st.one_of(st.none(), st.integers(0, 3)),
)
step = st.one_of(st.lists(write, min_size=1, max_size=3), query)


async def _apply(store, action) -> object:
    try:
        if isinstance(action, list):  # one unit of work
            uow = UnitOfWork()
            for op, key, *rest in action:
                if op == "delete":
                    current = await store.get("people", key)
                    offset = rest[0]
                    version = None if offset is None else (current or {}).get("_v", 1) + offset
                    uow.delete("people", key, version)
                elif op == "replace":
                    current = await store.get("people", key)
                    version = (current or {}).get("_v", 1) + rest[1]
                    uow.replace("people", {"_id": key, **rest[0], "_v": version})
                else:
                    getattr(uow, op)("people", {"_id": key, **rest[0]})
            await store.commit(uow)
            return "ok"
        _, where, order, limit = action
        found = await store.find("people", where, order=order, limit=limit)
        return [(d["_id"], d["_v"]) for d in found], await store.count("people", where)
    except DuplicateKey as err:
        return ("DuplicateKey", err.collection, err.key, err.fields)
    except Conflict as err:
        return ("Conflict", err.collection, err.key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=12))
async def test_both_engines_answer_alike(steps):
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = await open_document_store(SCHEMA, sqlite_path=str(Path(tmp) / "e.db"))
        mongo = await open_document_store(SCHEMA, mongo_database=AsyncMongoMockClient()["e"])
        try:
            for action in steps:
                assert await _apply(sqlite, action) == await _apply(mongo, action), action
            assert await sqlite.find("people") == await mongo.find("people")
        finally:
            await sqlite.close()
            await mongo.close()
