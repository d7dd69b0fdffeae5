"""The MongoDB data path on mongomock-motor: the same brand, the same full run, on
the tagging store over the runtime's MongoDB engine, to prove the code path (its
queries and writes) and that it gives exactly the SQLite run's tags and segments
(compared by digest). mongomock is an in-process imitation that scans every document
for every query, so its timings say nothing about MongoDB and are reported only for
completeness.

Seeding: the catalogue through the use cases, as on SQLite; the member index,
history rows and manual tags with insert_many of the documents the store writes
(services.tagging.store: members, history with the packed row, manual_tags; `_v` 1
as after an insert), because mongomock's per-document upsert (what put_many falls
back to there) scans the collection on every call and would take hours at 100k. For
the same reason (mongomock checks a unique index by scanning the collection for
every document inserted) the member index's secondary index is dropped for the
insert; reopening the store recreates it. The members sequence is set to what the
index holds, as index_members would have left it."""

from __future__ import annotations

from pathlib import Path

from bench.tagging import dataset, fullrun, synth
from bench.tagging import stages as st
from services.tagging.domain.packed import pack_row
from services.tagging.server import open_engine
from services.tagging.store import open_store

BATCH = 20_000


async def seed(db, brand: synth.Brand) -> None:
    cutter = synth.RowCutter(brand)
    await db["members"].drop_indexes()  # recreated when the store opens again
    for lo in range(0, brand.n, BATCH):
        hi = min(lo + BATCH, brand.n)
        await db["members"].insert_many(
            [{"_id": i, "member_id": synth.member_id(i), "_v": 1} for i in range(lo, hi)]
        )
        await db["history"].insert_many(
            [{"_id": r[0], "row": pack_row(r), "_v": 1} for r in cutter.rows(lo, hi)]
        )
    await db["_counters"].replace_one({"_id": "members"}, {"n": brand.n}, upsert=True)
    tags = dataset.manual_tags(brand, dataset.noon_of(brand.today))
    for lo in range(0, len(tags), BATCH):
        await db["manual_tags"].insert_many(
            [
                {"_id": f"{t.idx}:{t.tag}", "idx": t.idx, "tag": t.tag, "by": t.by,
                 "at": t.at, "_v": 1}
                for t in tags[lo : lo + BATCH]
            ]
        )


async def mongo_run(n: int, today: int, seed_value: int, data_dir: Path) -> dict:
    from mongomock_motor import AsyncMongoMockClient

    brand = synth.generate(n, today, seed_value)
    db = AsyncMongoMockClient()["pond_bench"]
    with st.Window() as seeding:
        store = await open_store(mongo_database=db)
        await dataset.define_catalogue(store, dataset.noon_of(today), data_dir)
        await seed(db, brand)
        await store.close()
    store = await open_store(mongo_database=db)
    engine, opened = await fullrun.open_timed(
        open_engine, dataset.settings_for(data_dir), dataset.noon_of(today), store=store
    )
    try:
        first = await fullrun.scoring_run(engine)
        result = fullrun.digest(engine)
        outbox = await db["_outbox"].count_documents({})
    finally:
        await store.close()
    return {
        "members": n,
        "seed_seconds": round(seeding.wall, 1),
        "open": opened,
        "first": first,
        "digest": result,
        "outbox_events": outbox,
    }
