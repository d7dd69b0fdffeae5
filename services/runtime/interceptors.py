"""What every RPC of every service goes through: request id, auth, the service's
page key (paging.py), decoding the request, error mapping (the application errors of
errors.py to status codes and google.rpc.Status details, status.py), one canonical
log line and Prometheus metrics.

It is applied when the handlers are registered, not through grpc.aio's interceptor
pipeline: `InterceptedServer` stands in for the server in the generated
`add_*Servicer_to_server` functions and wraps each method handler once. grpc.aio
runs its pipeline as a chain of coroutines on every call, even when the handler is
the same every time; registering wrapped handlers removes that cost (see the
CheckMembership-vs-echo bench).

The caller is authorized before its request is decoded: the wrapped handlers take
the raw bytes (no request_deserializer), so an anonymous or unauthorized caller never
makes the server parse its body, and a body that does not parse is INVALID_ARGUMENT
(MALFORMED_REQUEST) instead of grpc's UNKNOWN.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextvars import ContextVar
from time import perf_counter
from typing import Any, NoReturn, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from services.runtime.auth import Authorizer, current_caller
from services.runtime.errors import InvalidArgument, PondError
from services.runtime.logs import log_rpc, request_id_var
from services.runtime.metrics import RPC_METRICS
from services.runtime.paging import page_key
from services.runtime.request_ids import request_id_from
from services.runtime.status import grpc_code, to_rpc_status

REQUEST_ID_METADATA = "x-request-id"

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Behavior: TypeAlias = Callable[..., Any]
_Metadata: TypeAlias = "dict[str, str]"
# grpc's StatusCode.name is an enum property (a Python call); looked up once here.
_CODE_NAMES = {code: code.name for code in grpc.StatusCode}

_log = structlog.get_logger("pond.rpc")
# The call being served, for what outlives the handler's signature: the deadline a
# client of another service passes on (services.runtime.clients).
rpc_context_var: ContextVar[Context | None] = ContextVar(
    "pond_rpc_context", default=None
)
# The metadata grpc.aio already converted to find the handler. The lookup and the
# handler run in the call's own task, so the handler reads it here instead of
# converting it again (context.invocation_metadata() builds new tuples every time).
_lookup_metadata: ContextVar[tuple[tuple[str, Any], ...] | None] = ContextVar(
    "pond_lookup_metadata", default=None
)


class ServiceInterceptor:
    """Wraps method handlers with the per-call work; each handler is wrapped once."""

    def __init__(self, authorizer: Authorizer, page_key: bytes = b"") -> None:
        self._authorizer = authorizer
        self._page_key = page_key
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, method: str, handler: Handler | None) -> Handler | None:
        if handler is None:
            return None
        # The generic lookup returns the same handler for a method on every call.
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        # The wrappers get the raw bytes and decode them once the caller is known.
        decode = handler.request_deserializer or _raw
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, decode),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, decode),
                response_serializer=handler.response_serializer,
            )
        # Client or bidi streaming: only reflection, which is public. Anything else
        # would be unchecked, so refuse to serve it rather than let it through.
        if self._authorizer.is_public(method):
            return handler
        raise RuntimeError(f"{method}: streaming requests are not supported by the interceptor")

    def _begin(self, method: str, context: Context, pages: bool) -> str:
        # Only `-bin` keys carry bytes, and none of those is read here (typing.cast
        # would be a Python call on every RPC).
        offered: Any = _lookup_metadata.get()  # or grpc's Metadata, from the context
        if offered is None:  # a handler reached without the generic lookup
            offered = context.invocation_metadata()
        metadata: _Metadata = dict(offered or ())
        request_id = request_id_from(metadata.get(REQUEST_ID_METADATA))
        request_id_var.set(request_id)
        rpc_context_var.set(context)
        current_caller.set(self._authorizer.authorize(method, metadata))
        if pages:
            page_key.set(self._page_key)
        return request_id

    def _wrap_unary(self, method: str, behavior: Behavior, decode: Behavior) -> Behavior:
        pages = self._pages(decode)

        async def wrapper(raw: bytes, context: Context) -> Any:
            start = perf_counter()
            code = "OK"
            try:
                request_id = self._begin(method, context, pages)
                try:
                    request = decode(raw)
                except DecodeError as exc:
                    raise _malformed(method, raw) from exc
                response = await behavior(request, context)
                context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
                return response
            except Exception as exc:
                code = _CODE_NAMES[_status_code(exc, context)]
                await _abort(method, context, exc)
            finally:
                _finish(method, code, start)

        return wrapper

    def _wrap_stream(self, method: str, behavior: Behavior, decode: Behavior) -> Behavior:
        pages = self._pages(decode)

        async def wrapper(raw: bytes, context: Context) -> AsyncIterator[Any]:
            start = perf_counter()
            code = "OK"
            try:
                self._begin(method, context, pages)
                try:
                    request = decode(raw)
                except DecodeError as exc:
                    raise _malformed(method, raw) from exc
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write() (e.g. health Watch)
                    await result
            except Exception as exc:
                code = _CODE_NAMES[_status_code(exc, context)]
                await _abort(method, context, exc)
            finally:
                _finish(method, code, start)

        return wrapper

    def _pages(self, decode: Behavior) -> bool:
        """Whether the method's requests carry a page token: only those methods need
        the service's page key (a context variable set per call otherwise)."""
        message = getattr(decode, "__self__", None)  # Message.FromString's class
        fields = getattr(getattr(message, "DESCRIPTOR", None), "fields_by_name", {})
        return bool(self._page_key) and "page_token" in fields


class InterceptedServer:
    """Passed to `add_*Servicer_to_server(servicer, server)` in place of the grpc.aio
    server: registers every handler wrapped, through generic lookup only.

    The generated code registers each method twice, as a generic handler and as a
    "registered method". Registered methods are left out on purpose: grpc.aio's
    server loop keeps one pending request per registered method and waits on all of
    them (asyncio.wait) for every call it accepts, so each RPC paid for every method
    of the service (the member service has 24). Generic lookup is one dict lookup.
    """

    def __init__(self, server: grpc.aio.Server, interceptor: ServiceInterceptor) -> None:
        self._server = server
        self._interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_InterceptedGenericHandler(h, self._interceptor) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, Handler]
    ) -> None:
        """Served through the generic handlers registered alongside (see above)."""


class _InterceptedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: ServiceInterceptor) -> None:
        self._inner = inner
        self._interceptor = interceptor
        # The generated code registers a fixed table of handlers (grpc's
        # DictionaryGenericHandler): wrapped here once, each call is then one lookup
        # instead of three Python calls. Any other generic handler is asked per call.
        table = getattr(inner, "_method_handlers", None)
        self._table: dict[str, Handler | None] | None = None
        if isinstance(table, dict):
            self._table = {m: interceptor.wrap(m, h) for m, h in table.items()}

    def service(self, details: grpc.HandlerCallDetails) -> Handler | None:
        _lookup_metadata.set(details.invocation_metadata)
        if self._table is not None:
            return self._table.get(details.method)
        return self._interceptor.wrap(details.method, self._inner.service(details))


def _raw(data: bytes) -> bytes:
    return data


def _malformed(method: str, raw: bytes) -> PondError:
    _log.warning("malformed request", method=method, size=len(raw))
    return InvalidArgument(
        "MALFORMED_REQUEST",
        "the request body is not a valid message of this method's request type",
        domain="pond.rpc",
    )


def _status_code(exc: Exception, context: Context) -> grpc.StatusCode:
    if isinstance(exc, PondError):
        return grpc_code(exc)
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


async def _abort(method: str, context: Context, exc: Exception) -> NoReturn:
    """Ends the call with the status `exc` stands for (always raises). A failed call
    returns its request id too: that is when a caller needs it most."""
    request_id = request_id_var.get()
    trailing = ((REQUEST_ID_METADATA, request_id),) if request_id else ()
    if isinstance(exc, PondError):
        RPC_METRICS.record_error(method, exc.reason)
        status = to_rpc_status(exc)
        await context.abort_with_status(status._replace(  # type: ignore[attr-defined]
            trailing_metadata=(*status.trailing_metadata, *trailing)))
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    _log.exception("unhandled error", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error", trailing)


def _finish(method: str, code: str, start: float) -> None:
    elapsed = perf_counter() - start
    RPC_METRICS.record(method, code, elapsed)
    log_rpc(method, code, elapsed)
