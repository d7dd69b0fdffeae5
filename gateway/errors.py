"""One error shape for every failure: application/problem+json (RFC 9457) with a
stable `code` clients branch on and the request id, mapped from the services' gRPC
errors as the README's Gateway section lists. Internal details never leak: a
service's message is passed on only for the kinds that describe the caller's own
request (invalid input, not found, conflicts); anything unexpected is a bare 500."""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.runtime.errors import ErrorKind, PondError, shorten
from services.runtime.logs import current_request_id

log = structlog.get_logger("pond.gateway")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://docs.pond.dev/problems/"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}
_STATUS_BY_KIND = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.ABORTED: 409,
    ErrorKind.FAILED_PRECONDITION: 409,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.RESOURCE_EXHAUSTED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INTERNAL: 500,
}
# FAILED_PRECONDITION is 409 (the resource's state says no: BIRTHDAY_ALREADY_SET,
# INSUFFICIENT_POINTS) except for these, which say the request itself is wrong.
FAILED_PRECONDITION_AS_400 = frozenset({"IDEMPOTENCY_KEY_REUSED", "SELF_REFERRAL", "END_IN_PAST"})
# The request messages' wrappers around what the client sent.
_SERVICE_FIELD_PREFIXES = ("member.profile.", "member.", "profile.")
MEMBER_MERGED = "MEMBER_MERGED"
# Kinds whose message describes the caller's own request and may be shown.
_SHOWN_KINDS = frozenset({
    ErrorKind.INVALID_ARGUMENT, ErrorKind.NOT_FOUND, ErrorKind.ALREADY_EXISTS,
    ErrorKind.FAILED_PRECONDITION, ErrorKind.ABORTED,
})


class Violation(BaseModel):
    field: str
    description: str


class ProblemDetails(BaseModel):
    """Every error the gateway answers (application/problem+json)."""

    type: str = Field(examples=[TYPE_BASE + "not-found"])
    title: str
    status: int
    code: str = Field(description="Stable, UPPER_SNAKE: what clients branch on")
    detail: str = ""
    request_id: str
    violations: list[Violation] | None = None


class Problem(Exception):
    """An error the gateway answers with; raise it from routes and dependencies."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        violations: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail
        self.violations, self.headers = violations, headers or {}


def problem_body(status: int, code: str, detail: str = "",
                 violations: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code.lower().replace("_", "-"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": current_request_id(),
    }
    if violations:
        body["violations"] = [{"field": f, "description": d} for f, d in violations]
    return body


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem_body(problem.status, problem.code, problem.detail, problem.violations),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


def from_service_error(error: PondError) -> Problem:
    """The problem a service's application error stands for."""
    status = _STATUS_BY_KIND.get(error.kind, 500)
    if error.kind is ErrorKind.FAILED_PRECONDITION and error.reason in FAILED_PRECONDITION_AS_400:
        status = 400
    if error.reason == MEMBER_MERGED:
        # The token's member was joined into another (on another device): its session
        # is over, whatever it tried; signing in again lands on the survivor.
        return Problem(401, MEMBER_MERGED, "this membership was joined with another: sign in "
                       "again", headers={"WWW-Authenticate": 'Bearer realm="pond"'})
    if error.kind in _SHOWN_KINDS:
        violations = [(_client_field(f), d) for f, d in error.violations]
        detail = error.message
        if violations:  # said again with the client's field names
            detail = "; ".join(f"{f}: {d}" for f, d in violations[:3])
        return Problem(status, error.reason, shorten(detail, 256), violations=violations or None)
    if error.kind is ErrorKind.UNAVAILABLE:
        return Problem(503, "SERVICE_UNAVAILABLE", "a service is unavailable; retry later",
                       headers={"Retry-After": "1"})
    if error.kind is ErrorKind.RESOURCE_EXHAUSTED:
        return Problem(429, "RATE_LIMITED", "too many requests", headers={"Retry-After": "1"})
    # UNAUTHENTICATED/PERMISSION_DENIED from a service mean the gateway's own
    # credentials or rules are wrong, not the customer's: an internal error.
    log.error("service refused the gateway", kind=str(error.kind), reason=error.reason)
    return Problem(500, "INTERNAL", "internal error")


def _client_field(name: str) -> str:
    """A service's field path as the client named it (member.profile.birthday -> birthday)."""
    for prefix in _SERVICE_FIELD_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def from_rpc_error(error: grpc.aio.AioRpcError) -> Problem:
    """A gRPC failure that is no application error (deadline, cancelled, unknown)."""
    code = error.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Problem(504, "DEADLINE_EXCEEDED", "a service did not answer in time")
    if code is grpc.StatusCode.UNAVAILABLE:
        return Problem(503, "SERVICE_UNAVAILABLE", "a service is unavailable; retry later",
                       headers={"Retry-After": "1"})
    log.error("service call failed", code=code.name)
    return Problem(500, "INTERNAL", "internal error")


def _validation_violations(exc: RequestValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors()[:25]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        out.append((shorten(".".join(loc) or "body"), shorten(str(err.get("msg", "")), 160)))
    return out


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_service_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PondError)
        return problem_response(from_service_error(exc))

    async def on_rpc_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return problem_response(from_rpc_error(exc))

    async def on_invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        violations = _validation_violations(exc)
        summary = "; ".join(f"{f}: {d}" for f, d in violations[:3])
        return problem_response(Problem(400, "INVALID_ARGUMENT", shorten(summary, 256),
                                        violations=violations))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return problem_response(Problem(exc.status_code, code, _TITLES.get(exc.status_code, ""),
                                        headers=headers))

    async def on_redis_down(_request: Request, exc: Exception) -> JSONResponse:
        log.error("redis unreachable", error=type(exc).__name__)
        return problem_response(Problem(503, "SERVICE_UNAVAILABLE", "retry later",
                                        headers={"Retry-After": "1"}))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(PondError, on_service_error)
    app.add_exception_handler(grpc.aio.AioRpcError, on_rpc_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Sessions and rate limits live in Redis: without it, nothing is admitted.
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """Every method the request's path answers to, for a 405's Allow header: the routes
    of one path are separate (GET and PATCH /v1/me) and the router names only the
    first it tried. Asked of the router itself, one method at a time (405s only)."""
    routes = request.app.router.routes
    return ", ".join(
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
               for route in routes))


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route's error statuses, all in the one shape."""
    return {s: problem_response_doc(_TITLES.get(s, "Error")) for s in statuses}


def problem_response_doc(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}}
