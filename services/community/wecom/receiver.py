"""The WeCom callback receiver: a small ASGI app (Starlette) that the community
process serves on POND_COMMUNITY_CALLBACK_PORT, beside its gRPC port.

Why here and not in the gateway: the gateway is the customers' door (the
mini-program's API, on behalf of a logged-in member) and imports no service code;
callbacks are the brand's WeCom talking to the service that owns groups, with the
brand's callback secrets, and they turn into that service's joins and leaves.

    GET  /wecom/callback?msg_signature&timestamp&nonce&echostr   URL verification:
         the decrypted echostr, as WeCom's console asks when the URL is saved.
    POST /wecom/callback?msg_signature&timestamp&nonce           an event (XML with
         Encrypt): signature checked, decrypted, parsed, handed to `receive` (which
         records it durably and returns at once), answered "success".

A bad signature (or a message for another corp) is 403 with no details; a body
that is not a WeCom callback is 400; a body over MAX_CALLBACK_BYTES is 413, read no
further than that; WeCom retries anything but a 200 "success"."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.community.wecom.callbacks import (
    MAX_CALLBACK_BYTES,
    CallbackError,
    GroupChangeEvent,
    encrypted_field,
    parse_group_change,
)
from services.community.wecom.crypto import WeComCrypto, WeComCryptoError

log = structlog.get_logger("pond.community.wecom")
PATH = "/wecom/callback"
Receive = Callable[[GroupChangeEvent], Awaitable[bool]]


def _params(request: Request, *names: str) -> list[str] | None:
    values = [request.query_params.get(n, "") for n in names]
    return values if all(values) else None


async def _bounded_body(request: Request) -> bytes | None:
    """The body, read at most MAX_CALLBACK_BYTES of it: None when it is larger (or
    says it is). The port faces the internet and anyone may post to it before the
    signature is checked, so a huge or endless body must not be held in memory."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_CALLBACK_BYTES):
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CALLBACK_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def callback_app(crypto: WeComCrypto, receive: Receive) -> Starlette:
    forbidden = PlainTextResponse("forbidden", status_code=403)
    bad = PlainTextResponse("bad request", status_code=400)
    too_large = PlainTextResponse("body too large", status_code=413)

    async def verify_url(request: Request) -> Response:
        params = _params(request, "msg_signature", "timestamp", "nonce", "echostr")
        if params is None:
            return bad
        try:
            signature, timestamp, nonce, echostr = params
            return PlainTextResponse(crypto.decrypt(signature, timestamp, nonce, echostr))
        except WeComCryptoError as exc:
            log.warning("wecom url verification refused", code=exc.code)
            return forbidden

    async def event(request: Request) -> Response:
        params = _params(request, "msg_signature", "timestamp", "nonce")
        if params is None:
            return bad
        body = await _bounded_body(request)
        if body is None:
            return too_large
        try:
            signature, timestamp, nonce = params
            message = crypto.decrypt(signature, timestamp, nonce,
                                     encrypted_field(body.decode(errors="replace")))
        except WeComCryptoError as exc:
            log.warning("wecom callback refused", code=exc.code)
            return forbidden
        except CallbackError:
            return bad
        try:
            change = parse_group_change(message)
        except CallbackError as exc:
            log.warning("wecom callback unreadable", error=str(exc))
            return bad
        if change is not None:
            fresh = await receive(change)
            log.info("wecom callback received", chat_id=change.chat_id,
                     change=change.change.value, replay=not fresh)
        return PlainTextResponse("success")

    return Starlette(routes=[Route(PATH, verify_url, methods=["GET"]),
                             Route(PATH, event, methods=["POST"])])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the service host handles SIGTERM and stops us in order


class CallbackServer:
    """Serves the app on `host:port` (0: any free port, see `.port`) as a host task."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.app, self.host = app, host
        self._sock = self._bind(port)
        self.port: int = self._sock.getsockname()[1]

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.set_inheritable(True)
        return sock

    async def run(self, stop: asyncio.Event) -> None:
        if self._sock.fileno() == -1:  # restarted after a crash: the socket again
            self._sock = self._bind(self.port)
        server = _Server(uvicorn.Config(self.app, log_config=None, access_log=False,
                                        lifespan="off", timeout_graceful_shutdown=2))
        serving = asyncio.create_task(server.serve(sockets=[self._sock]))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            stopper.cancel()
            await serving
            self._sock.close()
