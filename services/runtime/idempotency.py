"""Idempotency for value-moving RPCs: a replay with the same key and the same request
returns the first response; the same key with other parameters is rejected.

Stores keep (scope, key) -> (fingerprint, response bytes), written in the same
transaction as the effect, so the record exists exactly when the effect does."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import message

from services.runtime.errors import PondError, failed_precondition

M = TypeVar("M", bound=message.Message)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    scope: str
    key: str
    fingerprint: str
    response: bytes


def fingerprint(request: message.Message) -> str:
    """A digest of the request's content (deterministic serialization)."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def replay(
    record: IdempotencyRecord,
    request_fingerprint: str,
    response_type: type[M],
    *,
    domain: str = "pond",
) -> M:
    if record.fingerprint != request_fingerprint:
        raise key_reused(record.key, domain=domain)
    response = response_type()
    response.ParseFromString(record.response)
    return response


def key_reused(key: str, *, domain: str = "pond") -> PondError:
    return failed_precondition(
        "IDEMPOTENCY_KEY_REUSED",
        f"idempotency key {key!r} was already used with different parameters",
        domain=domain,
        key=key,
    )
