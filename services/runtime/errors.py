"""Pond's errors: a gRPC status code plus google.rpc.Status details carrying one
ErrorInfo (reason in UPPER_SNAKE, domain pond.<area>) and, for invalid input,
BadRequest field violations. Servicers raise PondError; the interceptor maps it.

An error echoes what the caller sent (an id, a bad value), and the status travels in
trailing metadata, which clients cap (8 KiB by default, larger is RESOURCE_EXHAUSTED
instead of the error). So whatever came in, `to_status` keeps an error small: echoed
values are shortened with an ellipsis, and at most `MAX_VIOLATIONS` field violations
(within a byte budget) are listed, and the message and ErrorInfo say how many were
left out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

# What an error may hold of the caller's input (characters, except where in bytes).
ECHO_CHARS = 64  # an id or value quoted in a message, or an ErrorInfo metadata value
DESCRIPTION_CHARS = 160  # one field violation's description
MESSAGE_CHARS = 256
SUMMARY_CHARS = 200  # the violations summed up in an INVALID_ARGUMENT message
MAX_VIOLATIONS = 25
VIOLATIONS_BYTES = 1500  # UTF-8: Chinese text takes three bytes a character
ELLIPSIS = "\u2026"


def shorten(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` as an error may show it: at most `limit` characters, an ellipsis
    marking where it was cut."""
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


@dataclass
class PondError(Exception):
    code: grpc.StatusCode
    reason: str
    message: str
    domain: str = "pond"
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    def to_status(self) -> status_pb2.Status:
        metadata = {shorten(k): shorten(v) for k, v in self.metadata.items()}
        listed = _listed(self.violations)
        if len(listed) < len(self.violations):
            metadata["violations_not_listed"] = str(len(self.violations) - len(listed))
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(reason=self.reason, domain=self.domain, metadata=metadata)
        )
        details = [info]
        if listed:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in listed
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name),
            message=shorten(self.message, MESSAGE_CHARS),
            details=details,
        )


def _listed(violations: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
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
) -> PondError:
    return PondError(
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        _summary(violations),
        domain=domain,
        violations=violations,
    )


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


def not_found(what: str, ident: str, *, domain: str = "pond") -> PondError:
    shown = shorten(ident)
    return PondError(
        grpc.StatusCode.NOT_FOUND,
        f"{what.upper()}_NOT_FOUND",
        f"{what} {shown!r} not found",
        domain=domain,
        metadata={"id": shown},
    )


def already_exists(
    reason: str, message: str, *, domain: str = "pond", **metadata: str
) -> PondError:
    return PondError(grpc.StatusCode.ALREADY_EXISTS, reason, message, domain, dict(metadata))


def failed_precondition(
    reason: str, message: str, *, domain: str = "pond", **metadata: str
) -> PondError:
    return PondError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, domain, dict(metadata))


def unauthenticated(message: str) -> PondError:
    return PondError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message, "pond.auth")


def permission_denied(message: str) -> PondError:
    return PondError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message, "pond.auth")


def error_details(
    rpc_error: grpc.aio.AioRpcError | grpc.RpcError,
) -> tuple[str, list[tuple[str, str]]]:
    """Client side: (ErrorInfo reason, field violations) from a failed call."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(rpc_error) if hasattr(rpc_error, "trailing_metadata") else None
    reason, violations = "", []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations
