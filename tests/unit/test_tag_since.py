"""Since-cohorts of computed tags (services/tagging/since.py): a member's day is the
day of their latest gain; cohorts never overlap; only touched cohorts are written,
emptied ones deleted; they round-trip through their stored form."""

from __future__ import annotations

from pyroaring import BitMap

from services.tagging.since import TagSince


def test_the_day_is_that_of_the_latest_gain_and_losses_leave_no_trace() -> None:
    since = TagSince()
    since.gained("rfm:important_value", BitMap([1, 2, 3]), 100)
    since.gained("lifecycle:new", BitMap([1]), 100)
    since.lost("rfm:important_value", BitMap([2]))
    since.gained("rfm:important_value", BitMap([2, 4]), 103)  # 2 is back
    assert [since.day_of("rfm:important_value", i) for i in (1, 2, 3, 4, 5)] == [
        100, 103, 100, 103, None
    ]
    assert since.day_of("lifecycle:new", 1) == 100 and since.day_of("nope", 1) is None
    cohorts = since.cohorts["rfm:important_value"]
    assert not cohorts[100] & cohorts[103]  # never in two cohorts of one tag


def test_take_changes_writes_touched_cohorts_and_deletes_emptied_ones() -> None:
    since = TagSince()
    since.gained("a", BitMap([1, 2]), 10)
    since.gained("b", BitMap([3]), 10)
    put, delete = since.take_changes()
    assert (sorted(put), delete) == (["a@10", "b@10"], [])
    assert since.take_changes() == ({}, [])  # nothing touched since
    since.lost("a", BitMap([1, 2]))
    since.lost("b", BitMap([9]))  # not a holder: nothing to write
    since.gained("a", BitMap([2]), 11)
    put, delete = since.take_changes()
    assert (sorted(put), delete) == (["a@11"], ["a@10"])
    assert since.cohorts["a"] == {11: BitMap([2])}

    stored = {"a@11": put["a@11"], "b@10": since.cohorts["b"][10].serialize()}
    again = TagSince.from_blobs(stored)
    assert again.cohorts == {"a": {11: BitMap([2])}, "b": {10: BitMap([3])}}
    # A category tag may hold "@" (categories are free text): the day is after the last.
    odd = TagSince.from_blobs({"repurchase_due:a@b@12": BitMap([7]).serialize()})
    assert odd.day_of("repurchase_due:a@b", 7) == 12
