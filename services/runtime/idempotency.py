"""Idempotency for calls that move value, for every service: a method declares the
request field holding its key; the FIRST RESPONSE (the serialised proto) is stored in
the unit of work that makes the call's effect, so the record exists exactly when the
effect does; a replay returns that response unchanged (not a fresh rendering of
today's state); the same key with other parameters is refused (FAILED_PRECONDITION
IDEMPOTENCY_KEY_REUSED). Records expire after a retention (POND_IDEMPOTENCY_RETENTION_DAYS,
7 by default; each record carries its expires_at) and the host's hourly prune job
removes them (host.prune_job, for every service); until then they are honoured.

    # api.py: the declaration, and one call of it (render: result -> response proto)
    REDEEM = Idempotent("RedeemPoints", pb.PointsEntry)
    call = REDEEM.call(request, convert.points_entry_pb)
    # the use case, inside its own retry loop (a Conflict means: go round again)
    return await keeper.run(call, attempt, commit)   # attempt() -> (UnitOfWork, result)

Use cases never import protos: the api hands them `call`, whose `render` turns their
result into the response. A render may be async (a member needs its tier's name)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from google.protobuf import message

from services.runtime.clock import Clock, epoch_micros
from services.runtime.documents import (
    IDEMPOTENCY,
    Conflict,
    DocumentStore,
    DuplicateKey,
    IdempotencyRecord,
    UnitOfWork,
)
from services.runtime.errors import PondError, Violations, failed_precondition

DEFAULT_RETENTION = timedelta(days=7)
MAX_KEY_LENGTH = 128
M = TypeVar("M", bound=message.Message)
R = TypeVar("R")
W = TypeVar("W", bound=UnitOfWork)
# A use case's result -> the response (a coroutine for a render that must read).
Render = Callable[[Any], Any]


def fingerprint(request: message.Message) -> str:
    """A digest of the request's content (deterministic serialization)."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def key_reused(key: str, *, domain: str = "pond") -> PondError:
    return failed_precondition(
        "IDEMPOTENCY_KEY_REUSED",
        f"idempotency key {key!r} was already used with different parameters",
        domain=domain,
        key=key,
    )


def replay(
    record: IdempotencyRecord,
    request_fingerprint: str,
    response_type: type[M],
    *,
    domain: str = "pond",
) -> M:
    """The stored first response, or IDEMPOTENCY_KEY_REUSED for other parameters."""
    if record.fingerprint != request_fingerprint:
        raise key_reused(record.key, domain=domain)
    return response_type.FromString(record.response)


@dataclass(frozen=True)
class IdempotentCall(Generic[M]):
    """One call of an idempotent method: where its record lives (scope, key), what
    the request was (fingerprint) and how its result becomes the response."""

    scope: str
    key: str
    fingerprint: str
    response_type: type[M]
    render: Render
    replayed_field: str = ""


@dataclass(frozen=True)
class Idempotent(Generic[M]):
    """A method's declaration. `key_field` names the request field holding the key;
    the key is unique within the method and the values of `scope_fields` (a refund id
    within its order). `replayed_field`, if any, is a bool of the response set on a
    replay (the one thing a replay changes)."""

    method: str
    response_type: type[M]
    key_field: str = "idempotency_key"
    scope_fields: tuple[str, ...] = ()
    replayed_field: str = ""

    def check(self, v: Violations, request: message.Message) -> None:
        """The key is required and bounded (for methods whose key is not otherwise
        validated)."""
        key = getattr(request, self.key_field)
        if not key:
            v.add(self.key_field, "is required for calls that move value")
        elif len(key) > MAX_KEY_LENGTH:
            v.add(self.key_field, f"must be at most {MAX_KEY_LENGTH} characters")

    def call(self, request: message.Message, render: Render) -> IdempotentCall[M]:
        scope = ":".join([self.method, *(str(getattr(request, f)) for f in self.scope_fields)])
        return IdempotentCall(
            scope,
            getattr(request, self.key_field),
            fingerprint(request),
            self.response_type,
            render,
            self.replayed_field,
        )


class IdempotencyKeeper:
    """Runs idempotent calls over one service's document store."""

    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        retention: timedelta = DEFAULT_RETENTION,
        *,
        domain: str = "pond",
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self.domain = domain

    async def recall(self, call: IdempotentCall[M]) -> M | None:
        """The first response if the key was used (IDEMPOTENCY_KEY_REUSED if with other
        parameters), else None."""
        record = await self.store.recall(call.scope, call.key)
        if record is None:
            return None
        response = replay(record, call.fingerprint, call.response_type, domain=self.domain)
        if call.replayed_field:
            setattr(response, call.replayed_field, True)
        return response

    async def run(
        self,
        call: IdempotentCall[M],
        attempt: Callable[[], Awaitable[tuple[W | None, Any]]],
        commit: Callable[[W], Awaitable[None]],
        *,
        recall: bool = True,
    ) -> M:
        """One round: the recorded response, or `attempt()` -> (unit of work, result)
        committed with the rendered result as the record. A unit of work of None
        writes nothing and remembers nothing (the effect exists from before; the
        result describes it). Raises Conflict when a concurrent call with the key
        committed first: the caller's retry loop goes round and replays it.
        `recall=False` skips the look-up, for a first round whose attempt never
        refuses a used key otherwise than by its commit (DuplicateKey on the record,
        or on the key's own document made Conflict by `commit`): the next round,
        after the refusal, recalls."""
        if recall:
            replayed = await self.recall(call)
            if replayed is not None:
                return replayed
        uow, result = await attempt()
        response = await self.render(call, result)
        if uow is None:
            return response
        uow.remember(self.record(call, response.SerializeToString()))
        try:
            await commit(uow)
        except DuplicateKey as exc:
            if exc.collection != IDEMPOTENCY:
                raise
            raise Conflict(IDEMPOTENCY, call.key) from exc
        return response

    @staticmethod
    async def render(call: IdempotentCall[M], result: Any) -> M:
        rendered = call.render(result)
        if inspect.isawaitable(rendered):
            rendered = await rendered
        return cast(M, rendered)

    def record(self, call: IdempotentCall[Any], response: bytes) -> IdempotencyRecord:
        expires = self.clock.now() + self.retention
        return IdempotencyRecord(
            call.scope, call.key, call.fingerprint, response, epoch_micros(expires)
        )
