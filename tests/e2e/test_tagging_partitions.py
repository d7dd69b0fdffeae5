"""A scoring run split into partitions gives exactly the result of one: the same data
dir scored once in one partition (in-process) and, in an identical copy, in two
partitions (partition 0 in this process, partition 1 in a separate OS process via
`python -m services.tagging.worker RUN_ID 1`) ends with equal tag and segment
bitmaps, learned cycles, run counts and segment versions.

Both sides use the system clock (the worker cannot be handed a manual one)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pyroaring import BitMap

from services.runtime.clock import SystemClock, epoch_micros
from services.tagging.app import TaggingApp
from services.tagging.domain.definitions import ManualTag
from services.tagging.domain.history import MemberHistory
from services.tagging.runs import ScoringRunner
from services.tagging.server import open_engine
from services.tagging.settings import TaggingSettings
from services.tagging.store import SQLITE_FILE, open_store
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 3000
CATEGORIES = ("skincare", "makeup", "baby", "snacks")
WORKER_SECONDS = 120.0

RULE_TAGS = {
    "repeat_buyer": "orders_90d >= 2",
    "lapsed_vip": 'has_tag("vip") and days_since_last_order > 60',
    "skincare_fan": 'category_orders("skincare") >= 3',
    # Population scores and learned cycles feed rules: the merged statistics matter.
    "star": 'has_tag("rfm:important_value") or has_tag("quadrant:high_freq_high_interaction")',
    "due_mom": 'has_tag("has_kids") and has_tag("repurchase_due:baby")',
    "vip_star": 'has_tag("star") and has_tag("vip")',
}
SEGMENTS = {
    "moms_repeat": 'has_tag("repeat_buyer") and has_tag("has_kids")',
    "big_spenders": 'spend_365d > 300000 or in_segment("moms_repeat")',
    "champions": 'has_tag("rfm:important_value")',
    "due_skincare": 'has_tag("repurchase_due:skincare")',
    "sleepers": 'has_tag("lifecycle:sleeping") and aov > 20000',
    "due_anything": (
        'has_tag("repurchase_due:skincare") or has_tag("repurchase_due:makeup")'
        ' or has_tag("repurchase_due:baby") or has_tag("repurchase_due:snacks")'
    ),
}


def local_today(timezone: str) -> int:
    """Today as the engine counts days (since 1970-01-01 in the brand's time zone)."""
    return (datetime.now(ZoneInfo(timezone)).date() - date(1970, 1, 1)).days


def settings_for(data_dir: Path) -> TaggingSettings:
    return TaggingSettings(
        data_dir=data_dir, auth_secret=TEST_SECRET, mode="embedded", tagging_rescore_delay_seconds=0
    )


def synthetic_rows(index: dict[str, int], categories: dict[str, int], today: int) -> list[tuple]:
    """Members with a few years of orders (some refunded), categories and visits."""
    rng = random.Random(20260301)
    rows = []
    for member_id, idx in sorted(index.items()):
        h = MemberHistory(
            idx,
            registered_day=today - rng.randint(0, 900),
            tier=rng.randint(0, 3),
            points_balance=rng.randint(0, 5000),
        )
        habit = rng.choice(CATEGORIES)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4, 6, 9, 14])):
            day = today - min(rng.expovariate(1 / 120), 700)
            fen = rng.randint(1_000, 80_000)
            bought = {habit} | ({rng.choice(CATEGORIES)} if rng.random() < 0.4 else set())
            h.order_paid(int(day), fen, {categories[c] for c in bought}, today)
        if h.orders and rng.random() < 0.15:
            day, fen, _ = rng.choice(h.orders)
            full = rng.random() < 0.5
            h.order_refunded(day, fen if full else fen // 3, full, today)
        for _ in range(rng.randint(0, 4)):
            h.interacted(today - rng.randint(0, 120), today)
        rows.append(h.to_row())
        assert member_id  # every index entry gets a row
    return rows


async def build_data_dir(data_dir: Path) -> None:
    """History, manual tags, rule tags and segments, written before any run."""
    store = await open_store(sqlite_path=str(data_dir / SQLITE_FILE))
    try:
        today = local_today(settings_for(data_dir).timezone)
        index = await store.index_members([f"m{i:05d}" for i in range(MEMBERS)])
        categories = await store.category_ids(list(CATEGORIES))
        await store.put_histories(synthetic_rows(index, categories, today))
        now = epoch_micros(SystemClock().now())
        rng = random.Random(7)
        manual = [
            ManualTag(idx, tag, "operator:seed", now)
            for idx in index.values()
            for tag, share in (("has_kids", 0.3), ("vip", 0.1))
            if rng.random() < share
        ]
        assert await store.set_manual_tags(manual, []) == len(manual)
    finally:
        await store.close()

    engine = await open_engine(settings_for(data_dir))
    try:
        app = TaggingApp(engine)
        for name in ("has_kids", "vip"):
            await app.create_tag(name, "manual", "family", "", "", "")
        for name, expression in RULE_TAGS.items():
            await app.create_tag(name, "rule", "rules", "", "", expression)
        for seg_id, expression in SEGMENTS.items():
            await app.create_segment(seg_id, expression)
        await app.set_cycle("makeup", 45)
        await engine.flush()
    finally:
        await engine.store.close()


async def change_definitions(data_dir: Path) -> None:
    """Between runs: a stricter rule, fewer VIPs, a reworked segment."""
    engine = await open_engine(settings_for(data_dir))
    try:
        app = TaggingApp(engine)
        await app.update_tag("repeat_buyer", expression="orders_90d >= 3")
        vips = sorted(engine.tag_bitmaps["vip"])[::2]
        assert await engine.store.set_manual_tags([], [(i, "vip") for i in vips]) == len(vips)
        await app.update_segment(
            "sleepers", expression='has_tag("lifecycle:sleeping") and aov > 10000'
        )
        await engine.flush()
    finally:
        await engine.store.close()


async def run_one_partition(data_dir: Path) -> dict:
    engine = await open_engine(settings_for(data_dir))
    try:
        runner = ScoringRunner(engine)
        run = await runner.begin()
        return asdict(await runner.execute(run.id, 0))
    finally:
        await engine.store.close()


def worker_env(settings: TaggingSettings) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POND_") and k not in ("MONGODB_URI", "REDIS_URL")
    }
    env.update(
        POND_DATA_DIR=str(settings.data_dir),
        POND_AUTH_SECRET=TEST_SECRET,
        POND_MODE="embedded",
        POND_TIMEZONE=settings.timezone,
        POND_LIFECYCLE_NEW_DAYS=str(settings.lifecycle_new_days),
        POND_LIFECYCLE_ACTIVE_DAYS=str(settings.lifecycle_active_days),
        POND_LIFECYCLE_SLEEPING_DAYS=str(settings.lifecycle_sleeping_days),
        POND_LOG_LEVEL="warning",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    )
    return env


async def run_two_partitions(data_dir: Path, log_path: Path) -> dict:
    """Partition 0 here, partition 1 in a worker process, at the same time."""
    settings = settings_for(data_dir)
    engine = await open_engine(settings)
    try:
        runner = ScoringRunner(engine, partition_timeout=WORKER_SECONDS)
        run = await runner.begin(partitions=2)
        doc = asdict(run)
        assert doc["partitions"] == 2
        # What the partitions exchanged, as it stood when the finished run cleared it.
        exchanged: dict[str, list[int]] = {}
        clear = engine.store.clear_run_stats

        async def clear_after_looking() -> None:
            for key in ("stats", "result"):
                exchanged[key] = sorted(await engine.store.load_run_stats(f"{doc['id']}/{key}"))
            await clear()

        engine.store.clear_run_stats = clear_after_looking
        with log_path.open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.tagging.worker",
                doc["id"],
                "1",
                cwd=ROOT,
                env=worker_env(settings),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            try:
                partition0 = asyncio.create_task(runner.execute(doc["id"], 0))
                code = await asyncio.wait_for(worker.wait(), WORKER_SECONDS)
                if code != 0:
                    partition0.cancel()
                assert code == 0, log_path.read_text()
                done = asdict(await asyncio.wait_for(partition0, WORKER_SECONDS))
            finally:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        # Partition 1 really ran in the other process: both wrote their statistics,
        # and the finished run then cleared them.
        assert exchanged == {"stats": [0, 1], "result": [0, 1]}
        for key in ("stats", "result"):
            assert await engine.store.load_run_stats(f"{doc['id']}/{key}") == {}
        return done
    finally:
        await engine.store.close()


async def outcome(data_dir: Path) -> dict:
    store = await open_store(sqlite_path=str(data_dir / SQLITE_FILE))
    try:
        versions = {}
        for seg_id in SEGMENTS:
            versions[seg_id] = [
                {k: v for k, v in asdict(version).items() if k not in ("reason", "create_time")}
                for version in await store.segment_versions(seg_id)
            ]
        return {
            "tags": {
                k: BitMap.deserialize(v) for k, v in (await store.load_bitmaps("tag")).items()
            },
            "segments": {
                k: BitMap.deserialize(v) for k, v in (await store.load_bitmaps("segment")).items()
            },
            "cycles": {"cycles": await store.learned_cycles()},
            "versions": versions,
            "outbox": len(await store.docs.outbox_pending(1_000_000)),
        }
    finally:
        await store.close()


def assert_same_runs(single: dict, split: dict) -> None:
    for doc in (single, split):
        assert doc["state"] == "succeeded" and doc["stage"] == "done", doc
        assert doc["errors"] == []
        assert doc["members_total"] == doc["members_scored"] == MEMBERS
    assert (single["partitions"], split["partitions"]) == (1, 2)
    assert (split["tags_gained"], split["tags_lost"], split["events_published"]) == (
        single["tags_gained"],
        single["tags_lost"],
        single["events_published"],
    )


def assert_same_outcome(a: dict, b: dict) -> None:
    assert set(a["tags"]) == set(b["tags"])
    for name in sorted(a["tags"]):
        assert a["tags"][name] == b["tags"][name], name
    assert set(a["segments"]) == set(SEGMENTS) == set(b["segments"])
    for seg_id in SEGMENTS:
        assert a["segments"][seg_id] == b["segments"][seg_id], seg_id
    assert a["cycles"] == b["cycles"]
    assert a["versions"] == b["versions"]
    assert a["outbox"] == b["outbox"]


async def test_two_partitions_score_exactly_like_one(tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    await build_data_dir(one)
    shutil.copytree(one, two)
    timezone = settings_for(one).timezone
    day_before = local_today(timezone)

    single = await run_one_partition(one)
    split = await run_two_partitions(two, tmp_path / "worker-1.log")
    # A second round after identical changes: tags and segment members are lost too.
    for data_dir in (one, two):
        await change_definitions(data_dir)
    single_again = await run_one_partition(one)
    split_again = await run_two_partitions(two, tmp_path / "worker-2.log")

    if local_today(timezone) != day_before:
        pytest.skip("the day changed during the runs; both sides must score the same day")
    assert_same_runs(single, split)
    assert_same_runs(single_again, split_again)
    assert single["tags_gained"] > 0
    assert single_again["tags_lost"] > 0
    a, b = await outcome(one), await outcome(two)
    assert_same_outcome(a, b)

    # The comparison means something: every kind of tag and segment has members,
    # none has everyone, and cycles were learned from the merged statistics.
    for prefix in ("rfm:", "quadrant:", "lifecycle:", "repurchase_due:"):
        assert sum(len(bm) for k, bm in a["tags"].items() if k.startswith(prefix)), prefix
    for name in RULE_TAGS:
        assert 0 < len(a["tags"][name]) < MEMBERS, name
    for seg_id in SEGMENTS:
        assert 0 < len(a["segments"][seg_id]) < MEMBERS, seg_id
    learned = a["cycles"]["cycles"]
    assert len(learned) == len(CATEGORIES) and all(days > 0 for days in learned.values())
    assert any(v["removed"] > 0 for v in a["versions"]["moms_repeat"])
