"""Pond's errors: a gRPC status code plus google.rpc.Status details carrying one
ErrorInfo (reason in UPPER_SNAKE, domain pond.<area>) and, for invalid input,
BadRequest field violations. Servicers raise PondError; the interceptor maps it."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


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
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=self.domain, metadata=self.metadata
            )
        )
        details = [info]
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )


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
    summary = "; ".join(f"{f}: {d}" for f, d in violations)
    return PondError(
        grpc.StatusCode.INVALID_ARGUMENT, reason, summary, domain=domain, violations=violations
    )


def not_found(what: str, ident: str, *, domain: str = "pond") -> PondError:
    return PondError(
        grpc.StatusCode.NOT_FOUND,
        f"{what.upper()}_NOT_FOUND",
        f"{what} {ident!r} not found",
        domain=domain,
        metadata={"id": ident},
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
