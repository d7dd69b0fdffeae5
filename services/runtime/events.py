"""Events as a runtime service: a consumer registers a handler per payload type (the
protobuf message class of pond.events.v1), and each event is applied once per
consumer, whatever Redis redelivers:

    handlers = EventHandlers("tagging", store, clock)
    handlers.on(mev.OrderPaid, on_order_paid)

    async def on_order_paid(event: Received[mev.OrderPaid], uow: UnitOfWork) -> None:
        history = ...                        # read, apply the rules
        uow.put("histories", history_doc)    # add the writes; the runtime commits

The runtime adds the event's processed mark (`uow.mark_processed(consumer, id)`) to
the handler's unit of work and commits it after the handler returns, so the writes
and the mark land together or not at all. A handler that must act after the commit
while it still holds a lock commits itself with `await event.commit()` (True when
its writes landed; False when the event had been applied already, and nothing was
written). A mark that exists (DuplicateKey on the runtime's `_processed` records)
means the event was applied before: the delivery is acked without effect. A guarded
write that finds its document changed (Conflict) runs the handler again on fresh
reads, a few times, before the delivery is left for redelivery.

Events of a type no handler is registered for are acked and counted as ignored, and
so are those a handler's `when` (a pure test of the payload, given at registration)
turns down: they are not the handler's, so no processed mark is read or kept for
them (`.on(CheckedIn, on_checked_in, when=lambda p: bool(p.group_id))`).
Marks are pruned after `POND_PROCESSED_RETENTION_DAYS` by the host's prune job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import structlog
from google.protobuf import message
from pond.events.v1 import event_pb2
from prometheus_client import Counter

from services.runtime.clock import Clock, SystemClock, epoch_micros
from services.runtime.documents import PROCESSED, Conflict, DocumentStore, DuplicateKey, UnitOfWork

log = structlog.get_logger("pond.events")

P = TypeVar("P", bound=message.Message)
CONFLICT_ATTEMPTS = 5

OUTCOMES = Counter(
    "pond_event_handler_outcomes",
    "events a consumer's handlers saw, by outcome (applied, already_applied, ignored)",
    ["consumer", "outcome"],
)


@dataclass
class Received(Generic[P]):
    """One delivered event: the envelope's fields, the unpacked payload, and the
    unit of work its handler adds writes to (its processed mark already inside)."""

    envelope: event_pb2.Event
    payload: P
    uow: UnitOfWork
    _store: DocumentStore
    committed: bool = False
    applied_before: bool = False

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def subject_id(self) -> str:
        return self.envelope.subject_id

    @property
    def producer(self) -> str:
        return self.envelope.producer

    @property
    def request_id(self) -> str:
        return self.envelope.request_id

    @property
    def occurred_at(self) -> datetime:
        return self.envelope.occurred_at.ToDatetime(tzinfo=UTC)

    async def commit(self) -> bool:
        """Commits the unit of work (writes and mark) now; False, writing nothing,
        when this consumer had applied the event already. Once per delivery."""
        if self.committed:
            raise RuntimeError(f"event {self.id}: its unit of work is committed already")
        self.committed = True
        try:
            await self._store.commit(self.uow)
        except DuplicateKey as exc:
            if exc.collection != PROCESSED:
                raise
            self.applied_before = True
            return False
        return True


Handler = Callable[[Received[Any], UnitOfWork], Awaitable[None]]
_Registered = tuple[type[message.Message], Handler, Callable[[Any], bool] | None]


def _unpack(envelope: event_pb2.Event, payload_type: type[P]) -> P:
    payload = payload_type()
    if not envelope.payload.Unpack(payload):
        raise ValueError(f"payload is not a {envelope.type}")
    return payload


class EventHandlers:
    """One consumer's handlers by payload type; calling it handles one envelope (the
    raw handler EventConsumer takes)."""

    # It applies each event once by its own processed marks: the group reading for it
    # needs no done keys of its own in Redis (eventbus.EventConsumer).
    keeps_marks = True

    def __init__(self, consumer: str, store: DocumentStore, clock: Clock | None = None) -> None:
        self.consumer = consumer
        self.store = store
        # When marks are made (what pruning compares): the service's clock.
        self.clock = clock or SystemClock()
        self._by_type: dict[str, _Registered] = {}

    def on(
        self,
        payload_type: type[P],
        handler: Callable[[Received[P], UnitOfWork], Awaitable[None]],
        *,
        when: Callable[[P], bool] | None = None,
    ) -> EventHandlers:
        """Registers the handler of a payload type; `when` (optional, no I/O) says
        which of its events are the handler's: the others are acked with nothing
        read or written (no processed mark either)."""
        name = payload_type.DESCRIPTOR.full_name
        if name in self._by_type:
            raise ValueError(f"{self.consumer}: a handler for {name} is registered already")
        self._by_type[name] = (payload_type, handler, when)
        return self

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self._by_type)

    async def __call__(self, envelope: event_pb2.Event) -> None:
        entry = self._by_type.get(envelope.type)
        if entry is None:
            OUTCOMES.labels(self.consumer, "ignored").inc()
            return
        payload_type, handler, when = entry
        payload = _unpack(envelope, payload_type)
        if when is not None and not when(payload):
            OUTCOMES.labels(self.consumer, "ignored").inc()
            return
        if await self.store.is_processed(self.consumer, envelope.id):
            OUTCOMES.labels(self.consumer, "already_applied").inc()
            return
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            if attempt > 1:  # fresh, in case the handler changed it
                payload = _unpack(envelope, payload_type)
            uow = UnitOfWork()
            uow.mark_processed(self.consumer, envelope.id, epoch_micros(self.clock.now()))
            event: Received[Any] = Received(envelope, payload, uow, self.store)
            try:
                await handler(event, uow)
                if not event.committed:
                    await event.commit()
            except Conflict:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                log.info("event handler met a concurrent write; running it again",
                         event_id=envelope.id, event_type=envelope.type, attempt=attempt)
                continue
            outcome = "already_applied" if event.applied_before else "applied"
            OUTCOMES.labels(self.consumer, outcome).inc()
            return
