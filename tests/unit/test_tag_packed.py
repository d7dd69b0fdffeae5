"""The packed history row (services.tagging.domain.packed): it round-trips every row
exactly, and assembling packed rows gives the History that assembling the rows gives."""

from __future__ import annotations

import random

import numpy as np

from services.tagging.domain.features import History
from services.tagging.domain.history import MemberHistory, assemble
from services.tagging.domain.packed import assemble_packed, concatenate, pack_row, unpack_row

TODAY = 20_000


def histories(n: int, seed: int = 3) -> list[MemberHistory]:
    rng = random.Random(seed)
    out = []
    for idx in sorted(rng.sample(range(10 * n), n)):
        h = MemberHistory(idx, registered_day=TODAY - rng.randint(0, 900), tier=rng.randint(0, 4))
        h.points_balance = rng.randint(-5, 10**9)
        for _ in range(rng.choice([0, 0, 1, 3, 7])):
            cats = set(rng.sample(range(40), rng.randint(0, 3)))
            h.order_paid(TODAY - rng.randint(0, 500), rng.randint(1, 2**40), cats, TODAY)
        if h.orders and rng.random() < 0.5:
            day, fen, _ = rng.choice(h.orders)
            h.order_refunded(day, fen // 3, rng.random() < 0.5, TODAY)
        for _ in range(rng.randint(0, 4)):
            h.interacted(TODAY - rng.randint(0, 450), TODAY)
        out.append(h)
    return out


def same(a: History, b: History) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) and getattr(a, f).dtype == getattr(b, f).dtype
        for f in History.__dataclass_fields__
    )


def test_rows_round_trip_exactly_and_blobs_stay_aligned():
    for h in [MemberHistory(0), *histories(200)]:
        row = h.to_row()
        blob = pack_row(row)
        assert len(blob) % 8 == 0
        assert unpack_row(h.idx, blob) == row
        assert MemberHistory.from_row(unpack_row(h.idx, blob)) == h


def test_assembled_packed_rows_equal_assembled_rows():
    members = histories(500)
    rows = [h.to_row() for h in members]
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    assert same(assemble_packed(idx, [pack_row(r) for r in rows]), assemble(rows))
    empty = np.zeros(0, dtype=np.int64)
    assert same(assemble_packed(empty, []), assemble([]))


def test_batches_assembled_and_concatenated_equal_one_assembly():
    members = histories(300, seed=5)
    rows = [h.to_row() for h in members]
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    blobs = [pack_row(r) for r in rows]
    parts = [assemble_packed(idx[lo : lo + 70], blobs[lo : lo + 70]) for lo in range(0, 300, 70)]
    assert same(concatenate(parts), assemble(rows))
    assert same(concatenate(parts[:1]), assemble(rows[:70]))
    assert same(concatenate([]), assemble([]))
