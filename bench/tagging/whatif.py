"""Prototypes of the production changes the profile points at, measured against
what the service does today on the same data (`python -m bench.tagging --whatif`).
Nothing here is used by the service; each prototype proves its output identical.

1. One packed blob per member history instead of 13 columns. A scoring run today
   fetches 13 Python objects per member and assemble() zips, joins and converts
   them column by column; with one 8-byte-aligned blob per member (scalars, counts,
   then the arrays), a run fetches one object per member and parses the joined
   blobs with a handful of vectorised gathers.
2. TagsChanged payloads encoded as bytes, for the contract that carries one
   TagChange message per (member, tag) change (8 million in a first run at a million
   members): the wire format of a TagChange is a few fixed pieces around the member
   id, so a batch of 1000 changes is one bytes.join, byte-identical to
   SerializeToString of the messages. Skipped once the contract lists member ids per
   tag instead (which removes the per-change message altogether).
3. The cyclic garbage collector paused while a run loads and assembles rows: a
   million row tuples trigger dozens of full collections, each walking every live
   container (gc.disable() / gc.freeze() around the load, or higher thresholds)."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

import numpy as np
from pond.events.v1 import tagging_events_pb2 as tev
from pyroaring import BitMap

from bench.tagging import stages as st
from services.tagging.domain.features import History
from services.tagging.domain.history import ROW_COLUMNS, assemble
from services.tagging.events import CHANGES_PER_EVENT, tags_changed_payloads

# -- 1. packed history rows --

_HEAD = 80  # 8 int64 scalars, then int32 counts (orders, categories, interactions), pad


def pack_row(row: tuple) -> bytes:
    """A history row (ROW_COLUMNS) as one blob whose length is a multiple of 8."""
    (_idx, reg, tier, points, n_orders, spend, first, last, o_day, o_fen, o_cnt, cat, act) = row
    n_ord, n_cat, n_act = len(o_day) // 4, len(cat) // 16, len(act) // 4
    head = np.array([reg, tier, points, n_orders, spend, first, last, 0], dtype="<i8").tobytes()
    counts = np.array([n_ord, n_cat, n_act, 0], dtype="<i4").tobytes()
    body = head + counts + bytes(o_fen) + bytes(o_day) + bytes(cat) + bytes(act) + bytes(o_cnt)
    return body + b"\0" * (-len(body) % 8)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated [starts[i], starts[i] + counts[i]) ranges, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(starts - (ends - counts), counts)
    return shift + np.arange(total, dtype=np.int64)


def assemble_packed(idx: np.ndarray, blobs: list[bytes]) -> History:
    """The History that assemble() builds from the same members' rows."""
    n = len(blobs)
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    buf = b"".join(blobs)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    i8 = np.frombuffer(buf, dtype="<i8")
    i4 = np.frombuffer(buf, dtype="<i4")
    i1 = np.frombuffer(buf, dtype="<i1")
    s8 = starts // 8
    scalars = i8[s8[:, None] + np.arange(7)]  # (n, 7)
    counts = i4[(starts // 4 + 16)[:, None] + np.arange(3)].astype(np.int64)
    n_ord, n_cat, n_act = counts[:, 0], counts[:, 1], counts[:, 2]
    fen_at = starts + _HEAD
    day_at = fen_at + 8 * n_ord
    cat_at = day_at + 4 * n_ord
    act_at = cat_at + 16 * n_cat
    cnt_at = act_at + 4 * n_act

    def offsets(c: np.ndarray) -> np.ndarray:
        out = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(c, out=out[1:])
        return out

    cat = i4[_ranges(cat_at // 4, 4 * n_cat)].reshape(-1, 4)
    return History(
        idx=idx.astype(np.uint32),
        registered_day=scalars[:, 0].astype(np.int32),
        tier=scalars[:, 1].astype(np.int8),
        points_balance=scalars[:, 2].copy(),
        orders_total=scalars[:, 3].copy(),
        spend_total=scalars[:, 4].copy(),
        first_order_day=scalars[:, 5].astype(np.int32),
        last_order_day=scalars[:, 6].astype(np.int32),
        ord_offsets=offsets(n_ord),
        ord_day=i4[_ranges(day_at // 4, n_ord)].astype(np.int32),
        ord_fen=i8[_ranges(fen_at // 8, n_ord)].astype(np.int64),
        cat_offsets=offsets(n_cat),
        cat_id=cat[:, 0].copy(),
        cat_first_day=cat[:, 1].copy(),
        cat_last_day=cat[:, 2].copy(),
        cat_count=cat[:, 3].copy(),
        act_offsets=offsets(n_act),
        act_day=i4[_ranges(act_at // 4, n_act)].astype(np.int32),
        ord_cnt=i1[_ranges(cnt_at, n_ord)].astype(np.int64),
    )


def _same_history(a: History, b: History) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in History.__dataclass_fields__
        if getattr(a, f) is not None
    )


def packed_rows(db: Path) -> dict:
    """Today's load (13 columns: sqlite3 fetch + assemble) against one packed blob per
    member (fetch + assemble_packed), from the same SQLite file."""
    with sqlite3.connect(db) as conn:
        with st.Window() as fetch13:
            rows = conn.execute(
                f"SELECT {', '.join(ROW_COLUMNS)} FROM history ORDER BY idx"
            ).fetchall()
        with st.Window() as build13:
            h13 = assemble(rows)
        conn.execute("DROP TABLE IF EXISTS bench_history_packed")
        conn.execute("CREATE TABLE bench_history_packed (idx INTEGER PRIMARY KEY, row BLOB)")
        conn.executemany(
            "INSERT INTO bench_history_packed VALUES (?, ?)", ((r[0], pack_row(r)) for r in rows)
        )
        del rows
        with st.Window() as fetch1:
            packed = conn.execute(
                "SELECT idx, row FROM bench_history_packed ORDER BY idx"
            ).fetchall()
        with st.Window() as build1:
            idx = np.fromiter((r[0] for r in packed), dtype=np.int64, count=len(packed))
            h1 = assemble_packed(idx, [r[1] for r in packed])
        conn.execute("DROP TABLE bench_history_packed")
    return {
        "members": len(idx),
        "today": {"fetch": fetch13.as_dict(), "assemble": build13.as_dict()},
        "packed": {"fetch": fetch1.as_dict(), "assemble": build1.as_dict()},
        "identical": _same_history(h13, h1),
    }


# -- 3. the garbage collector during the load --


async def load_with_gc(store, enabled: bool) -> dict:
    """store.scan_histories + assemble, as a run does them, with the cyclic GC on or off."""
    gc.collect()
    was = gc.isenabled()
    if not enabled:
        gc.disable()
    collections = sum(s["collections"] for s in gc.get_stats())
    try:
        with st.Window() as w:
            rows: list[tuple] = []
            async for batch in store.scan_histories():
                rows.extend(batch)
            assemble(rows)
        done = sum(s["collections"] for s in gc.get_stats()) - collections
    finally:
        if was:
            gc.enable()
    del rows
    return {**w.as_dict(), "collections": done}


async def gc_during_load(store) -> dict:
    """On, off, on: the median of the two 'on' runs against the 'off' one."""
    on1 = await load_with_gc(store, True)
    off = await load_with_gc(store, False)
    on2 = await load_with_gc(store, True)
    on = on1 if on1["cpu"] <= on2["cpu"] else on2  # the kinder of the two
    return {"gc_on": on, "gc_off": off, "gc_on_runs": [on1, on2]}


# -- 2. TagsChanged as bytes --


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _id_field(member_id: str) -> bytes:
    raw = member_id.encode()
    return b"\x0a" + (bytes((len(raw),)) if len(raw) < 128 else _varint(len(raw))) + raw


def encode_tags_changed(changes, ids: list[str], run_id: str = "") -> list[bytes]:
    """Serialized TagsChanged payloads, byte for byte those of tags_changed_payloads."""
    encoded = [_id_field(m) for m in ids]  # the service would keep these per member index
    tail = _field(2, run_id.encode()) if run_id else b""
    out: list[bytes] = []
    batch: list[bytes] = []
    room = CHANGES_PER_EVENT
    for name, (gained, lost) in sorted(changes.tags.items()):
        for flag, members in ((True, gained), (False, lost)):
            suffix = _field(2, name.encode()) + (b"\x18\x01" if flag else b"")
            picked = [encoded[i] for i in members.to_array().tolist()]
            one_length = len({len(e) for e in picked}) == 1
            at = 0
            while at < len(picked):
                take = picked[at : at + room]
                at += len(take)
                if one_length:  # member ids of one length: one join per batch
                    head = b"\x0a" + _varint(len(take[0]) + len(suffix))
                    batch.append(head + (suffix + head).join(take) + suffix)
                else:
                    batch.extend(
                        b"\x0a" + _varint(len(e) + len(suffix)) + e + suffix for e in take
                    )
                room -= len(take)
                if room == 0:
                    out.append(b"".join(batch) + tail)
                    batch, room = [], CHANGES_PER_EVENT
    if room < CHANGES_PER_EVENT:
        out.append(b"".join(batch) + tail)
    return out


def one_change_per_message() -> bool:
    """Whether TagsChanged still carries one TagChange per (member, tag): the shape the
    encoder reproduces. (The contract may since list member ids per tag instead.)"""
    return "changes" in tev.TagsChanged.DESCRIPTOR.fields_by_name


def tags_changed_bytes(changes, ids: list[str], run_id: str) -> dict:
    """Today's payloads (messages, then SerializeToString) against the encoder."""
    if not one_change_per_message():
        return {"skipped": "TagsChanged no longer holds one TagChange per change"}
    with st.Window() as today:
        expected = [p.SerializeToString() for p in tags_changed_payloads(changes, ids, run_id)]
    with st.Window() as encoder:
        got = encode_tags_changed(changes, ids, run_id)
    return {
        "changes": sum(len(g) + len(lo) for g, lo in changes.tags.values()),
        "events": len(expected),
        "today": today.as_dict(),
        "encoder": encoder.as_dict(),
        "identical": got == expected,
    }


def first_run_changes(tag_bitmaps: dict[str, BitMap]):
    """The change set of a first run: every member of every computed tag gained."""
    from services.tagging.engine import TagChangeSet

    changes = TagChangeSet()
    for name, bm in tag_bitmaps.items():
        changes.tags[name] = (bm, BitMap())
    return changes


def check_encoder_small() -> bool:
    """Variable-length ids, gained and lost, several batches: same bytes."""
    from services.tagging.engine import TagChangeSet

    if not one_change_per_message():
        return True
    ids = [f"m{i}" * (1 + i % 3) for i in range(2500)]
    changes = TagChangeSet()
    changes.tags["a"] = (BitMap(range(0, 2500, 2)), BitMap(range(1, 900, 3)))
    changes.tags["b:c"] = (BitMap(range(5, 1500)), BitMap())
    expected = [p.SerializeToString() for p in tags_changed_payloads(changes, ids, "run1")]
    got = encode_tags_changed(changes, ids, "run1")
    parsed = [tev.TagsChanged.FromString(b) for b in got]
    return got == expected and sum(len(p.changes) for p in parsed) == changes.count()[0] + \
        changes.count()[1]
