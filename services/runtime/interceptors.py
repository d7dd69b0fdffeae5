"""The server interceptor every service runs: request id, auth, error mapping, one
canonical log line and Prometheus metrics per RPC.

It is one interceptor doing five small things in a fixed order rather than five
interceptors, because each grpc.aio interceptor re-wraps the handler on every call;
this keeps the per-RPC cost to one wrapper (see the GetMember-vs-echo benchmark).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import structlog
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from services.runtime.auth import Authorizer, current_caller
from services.runtime.errors import PondError
from services.runtime.logs import request_id_var

REQUEST_ID_METADATA = "x-request-id"

RPC_TOTAL = Counter("pond_grpc_requests_total", "gRPC calls handled", ["method", "code"])
RPC_SECONDS = Histogram(
    "pond_grpc_request_seconds",
    "gRPC call latency",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

_log = structlog.get_logger("pond.rpc")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        # A registered method resolves to the same handler every call: wrap it once.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client/bidi streaming: none in Pond's contracts yet

    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> str:
        metadata = dict(context.invocation_metadata())
        request_id = metadata.get(REQUEST_ID_METADATA) or os.urandom(8).hex()
        request_id_var.set(request_id)
        caller = self._authorizer.authorize(method, metadata)
        current_caller.set(caller)
        return request_id

    def _wrap_unary(self, method: str, behavior: Callable) -> Callable:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                request_id = self._begin(method, context)
                response = await behavior(request, context)
                context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
                return response
            except Exception as exc:
                code = _status_code(exc, context)
                await _abort(method, context, exc)
            finally:
                _finish(method, code, start)

        return wrapper

    def _wrap_stream(self, method: str, behavior: Callable) -> Callable:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                self._begin(method, context)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write() (e.g. health Watch)
                    await result
            except Exception as exc:
                code = _status_code(exc, context)
                await _abort(method, context, exc)
            finally:
                _finish(method, code, start)

        return wrapper


def _status_code(exc: Exception, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, PondError):
        return exc.code
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


async def _abort(method: str, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """Ends the call with the status `exc` stands for (always raises)."""
    if isinstance(exc, PondError):
        await context.abort_with_status(rpc_status.to_status(exc.to_status()))
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    _log.exception("unhandled error", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


_children: dict[tuple[str, grpc.StatusCode], tuple] = {}


def _metrics(method: str, code: grpc.StatusCode) -> tuple:
    """The metric children of (method, code), resolved once (labels() takes a lock)."""
    pair = _children.get((method, code))
    if pair is None:
        pair = _children[(method, code)] = (
            RPC_TOTAL.labels(method, code.name),
            RPC_SECONDS.labels(method),
        )
    return pair


def _finish(method: str, code: grpc.StatusCode, start: float) -> None:
    elapsed = time.perf_counter() - start
    total, seconds = _metrics(method, code)
    total.inc()
    seconds.observe(elapsed)
    _log.info("rpc", method=method, code=code.name, ms=round(elapsed * 1000, 3))
