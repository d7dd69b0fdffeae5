"""What every HTTP request goes through before and after its route, as one plain
ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): the request id
(the caller's X-Request-Id when it is acceptable, a new one otherwise; returned in
the response, bound to every log line and passed on in gRPC metadata by the
runtime's client), the deadline every gRPC call of the request ends within, the
body size limit (413 before the route runs), one canonical log line and the
Prometheus metrics per route."""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from prometheus_client import REGISTRY

from gateway.errors import PROBLEM_JSON, problem_body
from services.runtime.clients import request_deadline
from services.runtime.logs import log_rpc, request_id_var
from services.runtime.metrics import RpcMetrics
from services.runtime.request_ids import request_id_from

log = structlog.get_logger("pond.gateway")
HTTP_METRICS = RpcMetrics("http", "HTTP requests")
REGISTRY.register(HTTP_METRICS)

Scope = dict[str, Any]


class RequestContext:
    def __init__(self, app: Any, *, max_body_bytes: int, deadline_seconds: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.deadline_seconds = deadline_seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        offered = None
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        request_id = request_id_from(offered)
        request_id_var.set(request_id)
        request_deadline(self.deadline_seconds)
        id_header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            body_receive = await self._bounded_body(length, receive)
            if body_receive is None:
                await _problem(send_with_id, 413, "BODY_TOO_LARGE",
                               f"the body may hold {self.max_body_bytes} bytes")
                return
            await self.app(scope, body_receive, send_with_id)
        except Exception:
            # What no handler took: answered here, so it too carries the request id
            # header and the one shape, and says nothing of what went wrong.
            log.exception("unhandled error", path=scope.get("path", ""))
            if status:
                raise  # the response had begun: nothing else can be sent
            await _problem(send_with_id, 500, "INTERNAL", "internal error")
        finally:
            route = scope.get("route")
            name = f"{scope['method']} {getattr(route, 'path', 'unmatched')}"
            elapsed = time.perf_counter() - start
            HTTP_METRICS.record(name, str(status), elapsed)
            log_rpc(name, str(status), elapsed)

    async def _bounded_body(self, length: bytes | None, receive: Any) -> Any:
        """A `receive` replaying the whole body (read here, at most max_body_bytes),
        or None when the body is larger."""
        if length is not None:
            try:
                if int(length) > self.max_body_bytes:
                    return None
            except ValueError:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message])
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                       receive)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Any:
    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if then is not None:
            message: dict[str, Any] = await then()  # after the body: the disconnect
            return message
        return {"type": "http.disconnect"}

    return receive


async def _problem(send: Any, status: int, code: str, detail: str) -> None:
    body = orjson.dumps(problem_body(status, code, detail))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
