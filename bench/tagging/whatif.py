"""Prototypes of the production changes the profile points at, measured against
what the service does today on the same data (`python -m bench.tagging --whatif`).
Nothing here is used by the service; each prototype proves its output identical.

1. (Done: the store keeps one packed blob per member history,
   services.tagging.domain.packed.)
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

import numpy as np
from pond.events.v1 import tagging_events_pb2 as tev
from pyroaring import BitMap

from bench.tagging import stages as st
from services.tagging.domain.packed import assemble_packed
from services.tagging.events import CHANGES_PER_EVENT, tags_changed_payloads

# -- 3. the garbage collector during the load --


async def load_with_gc(store, enabled: bool) -> dict:
    """store.scan_histories + assemble_packed, as a run does them, with the cyclic GC
    on or off."""
    gc.collect()
    was = gc.isenabled()
    if not enabled:
        gc.disable()
    collections = sum(s["collections"] for s in gc.get_stats())
    try:
        with st.Window() as w:
            parts, blobs = [], []
            async for idx, packed in store.scan_histories():
                parts.append(idx)
                blobs.extend(packed)
            assemble_packed(np.concatenate(parts), blobs)
        done = sum(s["collections"] for s in gc.get_stats()) - collections
    finally:
        if was:
            gc.enable()
    del blobs
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
