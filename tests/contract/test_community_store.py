"""The community store's queries over every document-store engine (SQLite, the
MongoDB engine on mongomock-motor, a real MongoDB when MONGODB_URI is set): a pool's
next group by fill order, its open count, a chain's order list."""

from __future__ import annotations

import os
import uuid

import pytest
import pytest_asyncio

from services.community.domain import routing as dr
from services.community.domain.groups import archived_group, new_group, refresh_open
from services.community.store import (
    CHAIN_ENTRIES,
    GROUPS,
    MEMBERSHIPS,
    SCHEMA,
    active_entries,
    open_groups_in_pool,
    open_pool_groups,
)
from services.runtime.documents import UnitOfWork, open_document_store


@pytest.fixture(params=["sqlite", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def backend(request) -> str:
    return request.param


@pytest_asyncio.fixture
async def store(backend: str, tmp_path):
    if backend == "sqlite":
        s = await open_document_store(SCHEMA, sqlite_path=str(tmp_path / "community.db"))
    elif backend == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        s = await open_document_store(
            SCHEMA, mongo_database=AsyncMongoMockClient()[f"t_{uuid.uuid4().hex}"])
    else:
        uri = os.environ.get("MONGODB_URI", "")
        if not uri:
            pytest.skip("MONGODB_URI is not set")
        s = await open_document_store(SCHEMA, mongodb_uri=uri,
                                      mongodb_db=f"pond_contract_{uuid.uuid4().hex[:12]}")
    yield s
    await s.close()


def group(gid: str, pool: str, sequence: int, members: int, capacity: int = 3) -> dict:
    g = new_group(gid, {"name": gid, "kind": 1, "capacity": capacity}, 0, pool_id=pool,
                  sequence=sequence)
    return refresh_open({**g, "member_count": members})


async def test_a_pools_next_group_by_fill_order(store):
    uow = UnitOfWork()
    for g in (group("p-1", "p", 1, 3), group("p-2", "p", 2, 2), group("p-3", "p", 3, 0),
              group("p-4", "p", 4, 1), archived_group(group("p-5", "p", 5, 0), 0, "archived"),
              group("q-1", "q", 1, 0)):
        uow.insert(GROUPS.name, g)
    await store.commit(uow)
    first = await open_pool_groups(store, "p", dr.POOL_ORDER[dr.FILL_FIRST], 2)
    fewest = await open_pool_groups(store, "p", dr.POOL_ORDER[dr.BALANCE], 5)
    assert [g["_id"] for g in first] == ["p-2", "p-3"]
    assert [g["_id"] for g in fewest] == ["p-3", "p-4", "p-2"]  # all open ones: fewer
    assert await open_groups_in_pool(store, "p") == 3
    assert await open_pool_groups(store, "none", ("sequence",), 1) == []


async def test_memberships_by_member_and_pool_and_a_chains_order_list(store):
    uow = UnitOfWork()
    for gid, pool, state in (("a", "p", "active"), ("b", "p", "left"), ("c", "", "active")):
        uow.insert(MEMBERSHIPS.name, {"_id": f"{gid}:m1", "group_id": gid, "member_id": "m1",
                                      "pool_id": pool, "state": state})
    for member, position, state in (("m2", 2, "active"), ("m1", 1, "active"),
                                    ("m3", 3, "withdrawn"), ("m4", 4, "active")):
        uow.insert(CHAIN_ENTRIES.name, {"_id": f"c:{member}", "chain_id": "c",
                                        "member_id": member, "state": state,
                                        "position": position, "quantity": 1})
    await store.commit(uow)
    found = await store.find(MEMBERSHIPS.name, {"member_id": "m1", "pool_id": "p",
                                                "state": "active"}, limit=1)
    assert [d["group_id"] for d in found] == ["a"]
    assert [e["member_id"] for e in await active_entries(store, "c")] == ["m1", "m2", "m4"]
