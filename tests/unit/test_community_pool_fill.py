"""A batch of routes into one pool (domain.routing.PoolFill) chooses the same groups
as routing the members one at a time against the whole pool, for both fill orders,
reading only as many of the pool's open groups as the batch has routes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.community.domain import groups as dg
from services.community.domain import routing as dr

STRATEGIES = st.sampled_from([dr.FILL_FIRST, dr.BALANCE])


def pool(groups: list[tuple[int, int, bool]]) -> list[dict]:
    """(member_count, capacity, archived) per group, sequences 1.. in order."""
    out = []
    for seq, (count, capacity, archived) in enumerate(groups, start=1):
        g = dg.new_group(f"p-{seq:03d}", {"name": "g", "kind": 1, "capacity": capacity}, 0,
                         pool_id="p", sequence=seq)
        g["member_count"] = min(count, capacity)
        if archived:
            g["state"] = "archived"
        out.append(dg.refresh_open(g))
    return out


def fill_order(strategy: int, groups: list[dict]) -> list[dict]:
    """The store's answer: the open groups in the fill order, _id breaking ties."""
    fields = (*dr.POOL_ORDER[strategy], "_id")
    return sorted((g for g in groups if g["open"]), key=lambda g: [g[f] for f in fields])


def one_at_a_time(strategy: int, groups: list[dict], routes: int) -> list[str]:
    """Each route reads the pool's first open group afresh: the reference."""
    groups = [dict(g) for g in groups]
    chosen = []
    for _ in range(routes):
        first = fill_order(strategy, groups)
        if not first:
            chosen.append("NEW")
            break  # the batch opens a group here; compared up to this point
        g = first[0]
        g["member_count"] += 1
        dg.refresh_open(g)
        chosen.append(g["_id"])
    return chosen


def in_a_batch(strategy: int, groups: list[dict], routes: int) -> list[str]:
    read = [dict(g) for g in fill_order(strategy, groups)[:routes]]
    fill = dr.PoolFill(strategy, read, routes)
    chosen = []
    for _ in range(routes):
        choice = fill.next_group()
        assert choice is not dr.UNDECIDED  # never, with as many read as routes
        if choice is dr.OPEN_NEW:
            chosen.append("NEW")
            break
        assert isinstance(choice, dict)
        fill.update(dg.refresh_open({**choice, "member_count": choice["member_count"] + 1}))
        chosen.append(choice["_id"])
    return chosen


@given(STRATEGIES,
       st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6), st.booleans()), max_size=12),
       st.integers(1, 30))
def test_a_batch_chooses_what_one_route_at_a_time_would(strategy, groups, routes):
    pool_groups = pool(groups)
    assert in_a_batch(strategy, pool_groups, routes) == one_at_a_time(strategy, pool_groups,
                                                                      routes)


def test_a_full_read_pool_opens_a_group_and_the_new_group_fills_next():
    read = pool([(2, 2, False), (1, 2, False)])[1:]  # the first is full: not read
    fill = dr.PoolFill(dr.FILL_FIRST, read, 3)  # fewer than asked: all the open ones
    assert fill.next_group()["_id"] == "p-002"
    fill.update({**read[0], "member_count": 2, "open": False})
    assert fill.next_group() is dr.OPEN_NEW
    opened = pool([(0, 2, False)] * 3)[2]
    fill.update(opened)
    assert fill.next_group() is opened


def test_with_fewer_groups_read_than_routes_the_unread_ones_are_not_skipped():
    """Balance with two of four equal groups read: after both are joined, the unread
    third comes first, so the fill cannot answer (the member goes in the next batch)."""
    groups = pool([(3, 9, False)] * 4)
    fill = dr.PoolFill(dr.BALANCE, [dict(g) for g in groups[:2]], 2)
    for _ in range(2):
        g = fill.next_group()
        fill.update(dg.refresh_open({**g, "member_count": g["member_count"] + 1}))
    assert fill.next_group() is dr.UNDECIDED
