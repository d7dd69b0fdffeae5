"""`python -m bench.documents`: the SQLite document store against the raw sqlite3 it is
built on, per call, as ratios (raw time / store time: 1.0 means no overhead).

  get     store.get on a member-sized document vs a primary-key SELECT plus
          orjson.loads on a plain sqlite3 connection (what a hand-written store does);
  commit  a unit of work replacing one document, guarded, with one outbox event, vs the
          same UPDATE ... WHERE version = ? and INSERT through the same SqliteWriter;
          one at a time (latency) and 64 in flight (group commit's throughput).
Not part of `make bench` (yet): figures for the runtime's engineers, not goals.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from services.runtime.documents import Collection, Index, Schema, UnitOfWork
from services.runtime.documents_sqlite import SqliteDocumentStore
from services.runtime.storage import SqliteWriter, open_point_reader, open_sqlite

MEMBERS = Collection(
    "members",
    indexes=(Index(("store_id", "_id")), Index(("guide_id", "_id")), Index(("kind", "paid_until"))),
    fields=("tier_level", "channel"),
)
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
  id TEXT PRIMARY KEY, store_id TEXT, guide_id TEXT, tier_level INTEGER, kind INTEGER,
  channel INTEGER, paid_until INTEGER, version INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS members_store ON members (store_id, id);
CREATE INDEX IF NOT EXISTS members_guide ON members (guide_id, id);
CREATE INDEX IF NOT EXISTS members_paid ON members (kind, paid_until);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL);
"""


def member(i: int) -> dict:
    """About the size of a member document (~0.9 kB of JSON)."""
    return {
        "_id": f"m-{i:08d}", "store_id": f"s-{i % 50}", "guide_id": f"g-{i % 400}",
        "tier_level": i % 4, "kind": 1, "channel": 2, "paid_until": None,
        "name": "李小龙", "gender": 1, "birthday": "1990-05-01", "points": 1234,
        "balance_fen": 56_700, "growth": 8_900, "tier_since": 1_700_000_000_000_000,
        "created_at": 1_700_000_000_000_000, "updated_at": 1_700_000_000_000_000,
        "identities": [{"kind": 1, "lookup": f"phone:{i}", "ciphertext": "x" * 120}],
        "tags": [f"t{j}" for j in range(8)], "attributes": {"city": "上海", "source": "pos"},
    }


async def per_call(fn: Callable[[int], Awaitable[object]], n: int) -> float:
    for i in range(min(n, 500)):  # warm up
        await fn(i)
    start = time.perf_counter()
    for i in range(n):
        await fn(i)
    return (time.perf_counter() - start) / n * 1e6


async def in_flight(fn: Callable[[int], Awaitable[object]], n: int, width: int = 64) -> float:
    async def lane(j: int) -> None:
        for i in range(j, n, width):
            await fn(i)

    start = time.perf_counter()
    await asyncio.gather(*(lane(j) for j in range(width)))
    return (time.perf_counter() - start) / n * 1e6


async def main(n: int, members: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteDocumentStore.open(Schema("bench", (MEMBERS,)), Path(tmp) / "d.db")
        uow = UnitOfWork()
        uow.put_many("members", [member(i) for i in range(members)])
        await store.commit(uow)

        raw_path = Path(tmp) / "raw.db"
        conn = await open_sqlite(raw_path)
        await conn.executescript(RAW_SCHEMA)
        await conn.executemany(
            "INSERT INTO members VALUES (?,?,?,?,?,?,?,1,?)",
            [(d["_id"], d["store_id"], d["guide_id"], d["tier_level"], d["kind"],
              d["channel"], d["paid_until"], orjson.dumps(d).decode())
             for d in map(member, range(members))],
        )
        writer = SqliteWriter(conn)
        point: sqlite3.Connection = open_point_reader(raw_path)

        async def store_get(i: int) -> object:
            return await store.get("members", f"m-{i % members:08d}")

        async def raw_get(i: int) -> object:
            row = point.execute(
                "SELECT version, doc FROM members WHERE id = ?", (f"m-{i % members:08d}",)
            ).fetchone()
            doc = orjson.loads(row[1])
            doc["version"] = row[0]
            return doc

        docs = {i: await store.get("members", f"m-{i:08d}") for i in range(members)}
        raw_versions = dict.fromkeys(range(members), 1)

        async def store_commit(i: int) -> None:
            doc = docs[i % members]
            doc["points"] += 1
            u = UnitOfWork()
            u.replace("members", doc)
            u.emit(b"event-envelope" * 8)
            await store.commit(u)

        async def raw_commit(i: int) -> None:
            k = i % members
            d = {**docs[k], "_id": f"m-{k:08d}"}
            version = raw_versions[k]

            def work(w: sqlite3.Connection) -> None:
                cur = w.execute(
                    "UPDATE members SET store_id=?, guide_id=?, tier_level=?, kind=?, channel=?,"
                    " paid_until=?, version=?, doc=? WHERE id=? AND version=?",
                    (d["store_id"], d["guide_id"], d["tier_level"], d["kind"], d["channel"],
                     d["paid_until"], version + 1, orjson.dumps(d).decode(), d["_id"], version),
                )
                if cur.rowcount != 1:
                    raise RuntimeError("conflict")
                w.execute("INSERT INTO outbox (event) VALUES (?)", (b"event-envelope" * 8,))

            await writer.transaction(work)
            raw_versions[k] = version + 1

        async def best(measure, raw, ours, calls: int) -> tuple[float, float]:
            # Alternating rounds, the best of each side: the machine is shared and noisy.
            rounds = [(await measure(raw, calls), await measure(ours, calls)) for _ in range(5)]
            return min(r for r, _ in rounds), min(o for _, o in rounds)

        rows = [
            ("get", *await best(per_call, raw_get, store_get, n // 5)),
            ("commit, one at a time", *await best(per_call, raw_commit, store_commit, n // 50)),
            ("commit, 64 in flight", *await best(in_flight, raw_commit, store_commit, n // 20)),
        ]
        print(f"{'':24}{'raw µs':>10}{'store µs':>10}{'raw/store':>11}")
        for name, raw, ours in rows:
            print(f"{name:24}{raw:10.2f}{ours:10.2f}{raw / ours:11.2f}")
        point.close()
        await writer.close()
        await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.documents", description=__doc__)
    p.add_argument("--calls", type=int, default=50_000, help="gets per side (50000)")
    p.add_argument("--members", type=int, default=5_000, help="documents (5000)")
    args = p.parse_args()
    asyncio.run(main(args.calls, args.members))
