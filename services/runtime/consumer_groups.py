"""One consumer group per service and stream: the host merges the `Consumer`s a
service declares on one stream (one per concern: activity counters, a channel
adapter, merges) into one consumer group, named after the service unless a
`Consumer` names another. Each round of the group is then one read and one ack
whatever the number of concerns, instead of one per concern, and every event is
handed to the handlers that want its type (an events.EventHandlers says which:
`types`), the rest of the stream acked in bulk.

Each handler keeps its own processed marks (the name its EventHandlers was made
with), so it applies an event once whichever group delivers it. A handler that fails
does not keep the others from an event: every handler that wants it runs, then the
failure leaves the message pending; on redelivery those that applied it skip it by
their marks and the failed one runs again (dead-lettered after N deliveries, as in
any group).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from pond.events.v1 import event_pb2

Handle = Callable[[event_pb2.Event], Awaitable[None]]


@dataclass(frozen=True)
class Consumer:
    """Reads `stream` in consumer group `group` (default: the service's name) and
    hands each envelope to `handle` (an events.EventHandlers, by payload type).
    A service's Consumers on one stream with one group share that group."""

    stream: str
    handle: Handle
    group: str = ""
    # None: POND_EVENT_MAX_DELIVERIES / _CLAIM_IDLE_MS / _BLOCK_MS.
    max_deliveries: int | None = None
    claim_idle_ms: int | None = None
    block_ms: int | None = None


@dataclass(frozen=True)
class ConsumerGroup:
    """What one EventConsumer runs: the merged declarations of a stream and group."""

    stream: str
    group: str
    handle: Handle
    wanted: Collection[str] | None  # None: every type
    keeps_marks: bool  # every handler applies an event once by its own marks
    max_deliveries: int | None = None
    claim_idle_ms: int | None = None
    block_ms: int | None = None


class HandlersFailed(Exception):
    """More than one of a group's handlers failed on one event."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__("; ".join(repr(e) for e in errors))
        self.errors = errors


class Dispatch:
    """Hands an envelope to each handler that wants its type (a handler without
    `types` wants all), all of them even when one fails; then raises the failure."""

    def __init__(self, handles: Sequence[Handle]) -> None:
        self._for_all = [h for h in handles if _types(h) is None]
        self._by_type: dict[str, list[Handle]] = {}
        for handle in handles:
            for type_ in _types(handle) or ():
                self._by_type.setdefault(type_, []).append(handle)
        self.types: frozenset[str] | None = (
            None if self._for_all else frozenset(self._by_type))
        self.keeps_marks = all(_keeps_marks(h) for h in handles)

    async def __call__(self, envelope: event_pb2.Event) -> None:
        errors: list[Exception] = []
        for handle in [*self._by_type.get(envelope.type, ()), *self._for_all]:
            try:
                await handle(envelope)
            except Exception as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise HandlersFailed(errors)


def consumer_groups(consumers: Sequence[Consumer], service: str) -> list[ConsumerGroup]:
    """The groups a service's declared consumers make (in declaration order)."""
    by_group: dict[tuple[str, str], list[Consumer]] = {}
    for c in consumers:
        by_group.setdefault((c.stream, c.group or service), []).append(c)
    groups = []
    for (stream, group), declared in by_group.items():
        where = f"{service}: consumer group {group} on {stream}"
        _check_marks(declared, where)
        handle = declared[0].handle if len(declared) == 1 else Dispatch(
            [c.handle for c in declared])
        groups.append(ConsumerGroup(
            stream, group, handle, wanted=_types(handle), keeps_marks=_keeps_marks(handle),
            max_deliveries=_one([c.max_deliveries for c in declared], "max_deliveries", where),
            claim_idle_ms=_one([c.claim_idle_ms for c in declared], "claim_idle_ms", where),
            block_ms=_one([c.block_ms for c in declared], "block_ms", where),
        ))
    return groups


def _types(handle: Handle) -> frozenset[str] | None:
    types = getattr(handle, "types", None)
    return None if types is None else frozenset(types)


def _keeps_marks(handle: Handle) -> bool:
    return bool(getattr(handle, "keeps_marks", False))


def _check_marks(declared: list[Consumer], where: str) -> None:
    """Two handlers that keep marks under one name must not share a type: the second
    would find the event applied by the first and skip it."""
    seen: set[tuple[str, str]] = set()
    for c in declared:
        name = getattr(c.handle, "consumer", None)
        for type_ in _types(c.handle) or ():
            if name is not None and (name, type_) in seen:
                raise ValueError(f"{where}: two handlers named {name} for {type_}")
            seen.add((name or "", type_))


def _one(values: list[int | None], setting: str, where: str) -> int | None:
    """The setting the group's declarations give (they may leave it unset)."""
    given = {v for v in values if v is not None}
    if len(given) > 1:
        raise ValueError(f"{where}: its consumers declare different {setting}: {sorted(given)}")
    return given.pop() if given else None
