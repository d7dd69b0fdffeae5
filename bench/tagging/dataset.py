"""The synthetic brand in a tagging store, built the way an operator and the event
consumer would have built it, and cached.

Definitions go through the service's use cases (TaggingApp.create_tag and
create_segment, on an empty population, so segments materialise empty); the member
index through index_members, histories through put_histories in batches, manual
tags through set_manual_tags. None of that is timed. A SQLite database is built once
per (members, anchor day, seed, GENERATION) under the cache directory and copied for
each measurement, so that every run starts from the same untouched state."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.tagging import synth
from bench.tagging.brand import CATEGORIES, MANUAL_TAGS, RULES, SEGMENTS
from services.runtime.clock import ManualClock
from services.tagging.app import TaggingApp
from services.tagging.domain.definitions import ManualTag
from services.tagging.server import open_engine
from services.tagging.settings import TaggingSettings
from services.tagging.store import SQLITE_FILE, TaggingStore

GENERATION = 2  # bump when synth, brand or the store change, to invalidate cached databases
BATCH = 50_000
TIMEZONE = "Asia/Shanghai"
BENCH_SECRET = "pond-bench-tagging-" + "s" * 24


def anchor_today() -> tuple[int, datetime]:
    """Today in the brand's time zone (an epoch day) and noon of it (UTC): the
    histories are generated relative to the day the bench runs, so the services'
    real clocks and the data agree."""
    tz = ZoneInfo(TIMEZONE)
    local = datetime.now(tz).replace(hour=12, minute=0, second=0, microsecond=0)
    day = (local.replace(tzinfo=None) - datetime(1970, 1, 1)).days
    return day, local.astimezone(UTC)


def noon_of(day: int) -> datetime:
    local = datetime(1970, 1, 1) + timedelta(days=day, hours=12)
    return local.replace(tzinfo=ZoneInfo(TIMEZONE)).astimezone(UTC)


def settings_for(data_dir: Path, **extra) -> TaggingSettings:
    return TaggingSettings(
        data_dir=data_dir,
        mode="test",
        auth_secret=BENCH_SECRET,
        redis_url="",
        timezone=TIMEZONE,
        log_level="warning",
        **extra,
    )


async def define_catalogue(store: TaggingStore, now: datetime, data_dir: Path) -> None:
    """Categories, then manual and rule tags and segments through the use cases."""
    ids = await store.category_ids(list(CATEGORIES))
    if [ids[c] for c in CATEGORIES] != list(range(len(CATEGORIES))):
        raise RuntimeError(f"expected category ids 0..29 on a fresh store, got {ids}")
    engine = await open_engine(settings_for(data_dir), ManualClock(now), store=store)
    app = TaggingApp(engine)
    for tag in MANUAL_TAGS:
        await app.create_tag(tag, "manual", "bench", tag, "", "")
    for name, expression in RULES:
        await app.create_tag(name, "rule", "bench", name, "", expression)
    for seg_id, expression in SEGMENTS:
        await app.create_segment(seg_id, expression)


async def load_members(store: TaggingStore, brand: synth.Brand) -> None:
    """Member index and history rows, in batches."""
    cutter = synth.RowCutter(brand)
    for lo in range(0, brand.n, BATCH):
        hi = min(lo + BATCH, brand.n)
        ids = [synth.member_id(i) for i in range(lo, hi)]
        assigned = await store.index_members(ids)
        if assigned[ids[0]] != lo or assigned[ids[-1]] != hi - 1:
            raise RuntimeError("the member index is not dense from 0 on this store")
        await store.put_histories(cutter.rows(lo, hi))


def manual_tags(brand: synth.Brand, now: datetime) -> list[ManualTag]:
    at = int(now.timestamp() * 1_000_000)
    return [
        ManualTag(int(i), tag, "operator:bench", at)
        for tag, members in brand.manual.items()
        for i in members.tolist()
    ]


async def build(store: TaggingStore, brand: synth.Brand, data_dir: Path) -> None:
    """Catalogue, index, histories and manual tags."""
    await define_catalogue(store, noon_of(brand.today), data_dir)
    await load_members(store, brand)
    tags = manual_tags(brand, noon_of(brand.today))
    for lo in range(0, len(tags), BATCH):
        await store.set_manual_tags(tags[lo : lo + BATCH], [])


async def pristine(cache: Path, n: int, seed: int, say) -> tuple[Path, dict]:
    """The cached pristine database for n members today: (database path, manifest)."""
    today, _ = anchor_today()
    folder = cache / f"brand-{n}-{today}-{seed}-g{GENERATION}"
    db = folder / SQLITE_FILE
    manifest_path = folder / "manifest.json"
    if manifest_path.exists() and db.exists():
        return db, json.loads(manifest_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    say(f"generating a brand of {n:,} members (seed {seed}) ...")
    t0 = time.perf_counter()
    brand = synth.generate(n, today, seed)
    t1 = time.perf_counter()
    from services.tagging.store import open_store

    store = await open_store(sqlite_path=str(db))
    try:
        await build(store, brand, folder)
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:  # fold the WAL in, so a plain copy is complete
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t2 = time.perf_counter()
    manifest = {
        **synth.summary(brand),
        "today": today,
        "seed": seed,
        "generate_seconds": round(t1 - t0, 1),
        "write_seconds": round(t2 - t1, 1),
        "db_bytes": db.stat().st_size,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    say(f"  generated in {t1 - t0:.0f} s, written in {t2 - t1:.0f} s "
        f"({db.stat().st_size / 1e6:,.0f} MB)")
    return db, manifest


def working_copy(db: Path, data_dir: Path) -> Path:
    """A fresh copy of a pristine database where the service opens it in data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / SQLITE_FILE
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(db, target)
    return target
