"""How the host groups a service's declared consumers (services/runtime/consumer_groups.py):
one group per stream and group name, declarations that cannot share a group refused
at start-up rather than misbehaving later. (The groups at work, over a real server and
Redis: tests/integration/test_consumer_groups.py.)"""

from __future__ import annotations

import pytest
from pond.events.v1 import event_pb2
from pond.events.v1 import member_events_pb2 as mev

from services.runtime.consumer_groups import Consumer, consumer_groups
from services.runtime.events import EventHandlers


def handlers(name: str, *types: type) -> EventHandlers:
    async def ignore(_event, _uow) -> None:
        return None

    h = EventHandlers(name, store=None)  # type: ignore[arg-type]  # never called here
    for t in types:
        h.on(t, ignore)
    return h


async def raw(_envelope: event_pb2.Event) -> None:
    return None


def test_consumers_on_one_stream_form_one_group_per_group_name():
    groups = consumer_groups([
        Consumer("s1", handlers("a", mev.OrderPaid)),
        Consumer("s1", handlers("b", mev.TierChanged)),
        Consumer("s2", handlers("a", mev.OrderPaid)),
        Consumer("s1", handlers("c", mev.OrderPaid), group="isolated"),
    ], "svc")
    assert [(g.stream, g.group) for g in groups] == [
        ("s1", "svc"), ("s2", "svc"), ("s1", "isolated")]
    assert groups[0].wanted == {"pond.events.v1.OrderPaid", "pond.events.v1.TierChanged"}
    assert all(g.keeps_marks for g in groups)


def test_a_handler_without_types_makes_its_group_read_every_type_and_keep_done_keys():
    [group] = consumer_groups([Consumer("s1", handlers("a", mev.OrderPaid)),
                               Consumer("s1", raw)], "svc")
    assert group.wanted is None and not group.keeps_marks


def test_declarations_that_cannot_share_a_group_are_refused():
    with pytest.raises(ValueError, match="different block_ms"):
        consumer_groups([Consumer("s1", handlers("a", mev.OrderPaid), block_ms=200),
                         Consumer("s1", handlers("b", mev.TierChanged), block_ms=1000)], "svc")
    # One name's marks for one type twice: the second handler would never run.
    with pytest.raises(ValueError, match="two handlers named a"):
        consumer_groups([Consumer("s1", handlers("a", mev.OrderPaid)),
                         Consumer("s1", handlers("a", mev.OrderPaid, mev.TierChanged))], "svc")
    # Unset settings take the one that is given.
    [group] = consumer_groups([Consumer("s1", handlers("a", mev.OrderPaid), block_ms=200),
                               Consumer("s1", handlers("b", mev.TierChanged))], "svc")
    assert group.block_ms == 200
