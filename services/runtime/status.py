"""Application errors on the wire: each kind's gRPC status code, and the
google.rpc.Status a call ends with (one ErrorInfo: reason, domain, metadata; and
BadRequest field violations for invalid input), kept small whatever the caller sent
(the bounded-echo rules of errors.py). The interceptor uses `to_rpc_status` on the
server side; `from_rpc_error` turns a failed call back into the application error
on the client side, so code calling another service needs no grpc either."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime.errors import (
    KINDS,
    MESSAGE_CHARS,
    ErrorKind,
    PondError,
    check_reason,
    listed_violations,
    rpc_error_details,
    shorten,
)

GRPC_CODES: dict[ErrorKind, grpc.StatusCode] = {
    kind: grpc.StatusCode[kind.value] for kind in ErrorKind
}
_KINDS_BY_CODE = {code: kind for kind, code in GRPC_CODES.items()}


def grpc_code(error: PondError) -> grpc.StatusCode:
    return GRPC_CODES[error.kind]


def to_status(error: PondError) -> status_pb2.Status:
    """The google.rpc.Status for `error`, within the bounded-echo limits."""
    metadata = {shorten(k): shorten(v) for k, v in error.metadata.items()}
    listed = listed_violations(error.violations)
    if len(listed) < len(error.violations):
        metadata["violations_not_listed"] = str(len(error.violations) - len(listed))
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=error.domain, metadata=metadata)
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
        code=getattr(code_pb2, error.kind.value),
        message=shorten(error.message, MESSAGE_CHARS),
        details=details,
    )


def to_rpc_status(error: PondError) -> grpc.Status:
    """What `context.abort_with_status` takes."""
    return rpc_status.to_status(to_status(error))


def from_rpc_error(err: grpc.aio.AioRpcError) -> PondError | grpc.aio.AioRpcError:
    """The application error a failed call stands for (its kind from the status
    code, reason, domain and metadata from ErrorInfo, violations from BadRequest);
    `err` itself for codes that are no application error (CANCELLED,
    DEADLINE_EXCEEDED, UNKNOWN...)."""
    kind = _KINDS_BY_CODE.get(err.code())
    if kind is None:
        return err
    info, bad = rpc_error_details(err)
    reason = info.reason if info is not None and _well_formed(info.reason) else kind.value
    return KINDS[kind](
        reason,
        err.details() or "",
        (info.domain if info is not None else "") or "pond",
        dict(info.metadata) if info is not None else {},
        [(v.field, v.description) for v in bad.field_violations] if bad is not None else [],
    )


def _well_formed(reason: str) -> bool:
    try:
        check_reason(reason)
    except ValueError:
        return False
    return True
