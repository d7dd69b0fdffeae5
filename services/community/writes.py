"""What every community use case writes with: the store, the clock, turns and retries
per contended record (services.runtime.retrying), events into the unit of work, and
rule violations as FAILED_PRECONDITION."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import TypeVar

from google.protobuf.message import Message

from services.community.domain.errors import RuleViolation
from services.community.events import PRODUCER
from services.runtime.clock import Clock, epoch_micros
from services.runtime.documents import Doc, DocumentStore, UnitOfWork
from services.runtime.errors import (
    FailedPrecondition,
    broken_rule,
    conflict,
    not_found,
)
from services.runtime.eventbus import make_event
from services.runtime.retrying import Retrying

DOMAIN = "pond.community"
T = TypeVar("T")


def rule_error(exc: RuleViolation) -> FailedPrecondition:
    return broken_rule(exc, domain=DOMAIN)


class Writes:
    def __init__(self, store: DocumentStore, clock: Clock, timezone: str) -> None:
        self.store, self.clock, self.timezone = store, clock, timezone
        self._retrying = Retrying(lambda: conflict(
            "CONCURRENT_UPDATE", "the record changed concurrently; retry", domain=DOMAIN))

    def now(self) -> datetime:
        return self.clock.now()

    def now_micros(self) -> int:
        return epoch_micros(self.clock.now())

    async def run(self, key: Hashable, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt` (load, decide, commit) in `key`'s turn, again when it lost a race;
        a rule's refusal ends the call as FAILED_PRECONDITION."""
        try:
            return await self._retrying.run(key, attempt)
        except RuleViolation as exc:
            raise rule_error(exc) from exc

    @staticmethod
    def emit(uow: UnitOfWork, subject_id: str, payload: Message, now: datetime) -> None:
        uow.emit(make_event(PRODUCER, subject_id, payload, now).SerializeToString())

    async def need(self, collection: str, what: str, key: str) -> Doc:
        doc = await self.store.get(collection, key)
        if doc is None:
            raise not_found(what, key, domain=DOMAIN)
        return doc
