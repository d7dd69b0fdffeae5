"""Pond's application errors: what a use case raises when a call cannot succeed, as
plain Python exceptions of a few kinds (not found, already exists, failed
precondition, conflict, invalid argument, ...). Each carries a reason (UPPER_SNAKE,
checked when the error is made), a message, a domain (`pond.<area>`), string
metadata and, for invalid input, field violations. No gRPC here: the interceptor
maps each kind to a status code and google.rpc.Status details (status.py), so use
cases and domain code never import grpc.

An error echoes what the caller sent (an id, a bad value), and the status travels in
trailing metadata, which clients cap (8 KiB by default, larger is RESOURCE_EXHAUSTED
instead of the error). So whatever came in, an error stays small: echoed values are
shortened with an ellipsis (`shorten`), and at most `MAX_VIOLATIONS` field
violations (within a byte budget, `listed_violations`) go on the wire, the message
and ErrorInfo saying how many were left out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

from google.rpc import error_details_pb2, status_pb2

from services.runtime.rules import RuleViolation

# What an error may hold of the caller's input (characters, except where in bytes).
ECHO_CHARS = 64  # an id or value quoted in a message, or an ErrorInfo metadata value
DESCRIPTION_CHARS = 160  # one field violation's description
MESSAGE_CHARS = 256
SUMMARY_CHARS = 200  # the violations summed up in an INVALID_ARGUMENT message
MAX_VIOLATIONS = 25
VIOLATIONS_BYTES = 1500  # UTF-8: Chinese text takes three bytes a character
ELLIPSIS = "\u2026"

# AIP-193: a reason is UPPER_SNAKE_CASE, at most 63 characters, no spaces.
REASON_RE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
MAX_REASON_CHARS = 63


class ErrorKind(StrEnum):
    """The kinds of failure the runtime knows; named after the gRPC codes they map to
    (status.py), which clients see."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


def shorten(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` as an error may show it: at most `limit` characters, an ellipsis
    marking where it was cut."""
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


def check_reason(reason: str) -> str:
    """`reason` if it is UPPER_SNAKE (AIP-193); ValueError otherwise: a reason is a
    constant clients branch on, so a malformed one is a bug, caught by the tests."""
    if len(reason) > MAX_REASON_CHARS or not REASON_RE.fullmatch(reason):
        raise ValueError(f"error reason {reason!r} is not UPPER_SNAKE (A-Z, 0-9, _)")
    return reason


def reason_from(words: str) -> str:
    """`points entry` -> `POINTS_ENTRY`: a reason made of words."""
    return re.sub(r"[^A-Za-z0-9]+", "_", words).strip("_").upper()


@dataclass
class PondError(Exception):
    """An application error; raise one of its kinds (NotFound, FailedPrecondition...)."""

    kind: ClassVar[ErrorKind]
    reason: str
    message: str
    domain: str = "pond"
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not hasattr(type(self), "kind"):
            raise TypeError("raise one of the kinds of PondError (NotFound, Conflict, ...)")
        check_reason(self.reason)

    def __str__(self) -> str:
        return f"{self.kind} {self.reason}: {self.message}"


class InvalidArgument(PondError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(PondError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(PondError):
    kind = ErrorKind.ALREADY_EXISTS


class FailedPrecondition(PondError):
    """The system is not in the state the call needs (a rule says no): not
    retryable as it is."""

    kind = ErrorKind.FAILED_PRECONDITION


class Conflict(PondError):
    """A concurrent change won (an optimistic guard failed every attempt): safe to
    retry the whole call (gRPC ABORTED)."""

    kind = ErrorKind.ABORTED


class PermissionDenied(PondError):
    kind = ErrorKind.PERMISSION_DENIED


class Unauthenticated(PondError):
    kind = ErrorKind.UNAUTHENTICATED


class ResourceExhausted(PondError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unavailable(PondError):
    """A dependency is down for now: retry later."""

    kind = ErrorKind.UNAVAILABLE


class Internal(PondError):
    kind = ErrorKind.INTERNAL


KINDS: dict[ErrorKind, type[PondError]] = {
    cls.kind: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Conflict,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        Internal,
    )
}


def listed_violations(violations: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The violations an error lists: shortened, at most MAX_VIOLATIONS of them and
    (past the first) within VIOLATIONS_BYTES."""
    listed: list[tuple[str, str]] = []
    budget = VIOLATIONS_BYTES
    for f, d in violations[:MAX_VIOLATIONS]:
        item = (shorten(f), shorten(d, DESCRIPTION_CHARS))
        budget -= len(item[0].encode()) + len(item[1].encode())
        if budget < 0 and listed:
            break
        listed.append(item)
    return listed


class Violations:
    """Collects field violations; `raise_if_any` ends the call with INVALID_ARGUMENT."""

    def __init__(self, domain: str = "pond") -> None:
        self.domain = domain
        self.items: list[tuple[str, str]] = []

    def add(self, field_path: str, description: str) -> None:
        self.items.append((field_path, description))

    def check(self, ok: bool, field_path: str, description: str) -> bool:
        if not ok:
            self.add(field_path, description)
        return ok

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument(self.items, domain=self.domain)


def invalid_argument(
    violations: list[tuple[str, str]], *, domain: str = "pond", reason: str = "INVALID_ARGUMENT"
) -> InvalidArgument:
    return InvalidArgument(reason, _summary(violations), domain=domain, violations=violations)


def _summary(violations: Sequence[tuple[str, str]]) -> str:
    """`field: problem; field: problem; and 12 more`, within SUMMARY_CHARS (the
    first one always shown)."""
    parts: list[str] = []
    used = 0
    for i, (f, d) in enumerate(violations):
        part = f"{shorten(f)}: {shorten(d, DESCRIPTION_CHARS)}"
        used += len(part) + 2
        if parts and used > SUMMARY_CHARS:
            return "; ".join(parts) + f"; and {len(violations) - i} more"
        parts.append(part)
    return "; ".join(parts)


def not_found(what: str, ident: str, *, domain: str = "pond") -> NotFound:
    """NOT_FOUND for `what` (words: "points entry") named `ident`; the reason is
    `<WHAT>_NOT_FOUND` (POINTS_ENTRY_NOT_FOUND)."""
    shown = shorten(ident)
    return NotFound(
        f"{reason_from(what)}_NOT_FOUND",
        f"{what} {shown!r} not found",
        domain=domain,
        metadata={"id": shown},
    )


def already_exists(
    reason: str, message: str, *, domain: str = "pond", **metadata: str
) -> AlreadyExists:
    return AlreadyExists(reason, message, domain, dict(metadata))


def failed_precondition(
    reason: str, message: str, *, domain: str = "pond", **metadata: str
) -> FailedPrecondition:
    return FailedPrecondition(reason, message, domain, dict(metadata))


def conflict(reason: str, message: str, *, domain: str = "pond", **metadata: str) -> Conflict:
    return Conflict(reason, message, domain, dict(metadata))


def unauthenticated(message: str) -> Unauthenticated:
    return Unauthenticated("UNAUTHENTICATED", message, "pond.auth")


def permission_denied(message: str) -> PermissionDenied:
    return PermissionDenied("PERMISSION_DENIED", message, "pond.auth")


@runtime_checkable
class _FailedCall(Protocol):
    def trailing_metadata(self) -> Any: ...


STATUS_DETAILS_METADATA = "grpc-status-details-bin"


def rpc_error_details(rpc_error: object) -> tuple[Any, Any]:
    """Client side: the (ErrorInfo, BadRequest) of a failed call (a grpc.RpcError),
    each None when absent, read from the google.rpc.Status in its trailing metadata."""
    info = bad = None
    trailing = rpc_error.trailing_metadata() if isinstance(rpc_error, _FailedCall) else None
    for key, value in trailing or ():
        if key != STATUS_DETAILS_METADATA:
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
    return info, bad


def error_details(rpc_error: object) -> tuple[str, list[tuple[str, str]]]:
    """Client side: (ErrorInfo reason, field violations) from a failed call."""
    info, bad = rpc_error_details(rpc_error)
    violations = [(v.field, v.description) for v in bad.field_violations] if bad else []
    return (info.reason if info else ""), violations


def broken_rule(exc: RuleViolation, *, domain: str) -> FailedPrecondition:
    """A domain rule's refusal as FAILED_PRECONDITION with its reason and metadata."""
    return failed_precondition(exc.reason, exc.message, domain=domain, **exc.metadata)
