"""The HTTP servers of the gateway benchmark, one process each, all on the gateway's own
uvicorn configuration (gateway.server.uvicorn_config: uvloop, httptools, proxy
headers, no access log, no server header):

    python -m bench.http_servers gateway   --port-file F   (settings from POND_*/REDIS_URL)
    python -m bench.http_servers starlette --port-file F --body-file B
    python -m bench.http_servers raw       --port-file F --body-file B
    python -m bench.http_servers fastapi   --port-file F --body-file B

`gateway` is `python -m gateway` (the production app, opening its member client and
Redis at start-up) on a free port. `starlette` is the baseline: a bare Starlette app
with one JSON endpoint answering the body in B (the gateway's /v1/me answer) through
JSONResponse. `raw` is no framework at all: an asyncio protocol answering every
request with the same bytes, to measure the load generator's own ceiling. `fastapi`
is the framework's floor: a FastAPI app answering the same body from one route with
no dependencies, middleware or calls (what any FastAPI gateway reaches at best).

Each binds 127.0.0.1 on a free port, writes it to --port-file and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from bench.server import _write_port

JSON_PATH = "/json"


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _serve(app: Any, port_file: str, **settings: Any) -> None:
    from gateway.server import uvicorn_config
    from gateway.settings import GatewaySettings

    gateway_settings = GatewaySettings(**settings)
    sock = _listening_socket()
    config = uvicorn_config(app, gateway_settings, sock.getsockname()[1])
    _write_port(port_file, sock.getsockname()[1])  # the runner waits for /healthz too
    uvicorn.Server(config).run(sockets=[sock])


def serve_gateway(port_file: str) -> None:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from services.runtime.logs import configure_logging

    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    _serve(create_app(settings), port_file)


def serve_starlette(port_file: str, body: dict[str, Any]) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(body)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route(JSON_PATH, endpoint), Route("/healthz", healthz)])
    _serve(app, port_file)


def serve_fastapi(port_file: str, body: dict[str, Any]) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(JSON_PATH)
    async def endpoint() -> JSONResponse:
        return JSONResponse(body)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    _serve(app, port_file)


class _Fixed(asyncio.Protocol):
    """Answers each request (a head ending in a blank line; the benchmark's GETs have
    no body) with the same bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4:]
            assert self.transport is not None
            self.transport.write(self.answer * count)


def serve_raw(port_file: str, body: dict[str, Any]) -> None:
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(payload), payload))

    async def main() -> None:
        sock = _listening_socket()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Fixed(answer), sock=sock)
        _write_port(port_file, sock.getsockname()[1])
        stop = asyncio.Event()
        import signal

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_servers")
    parser.add_argument("kind", choices=("gateway", "starlette", "raw", "fastapi"))
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--body-file", help="starlette, raw, fastapi: the JSON body to answer")
    args = parser.parse_args(argv)
    if args.kind == "gateway":
        serve_gateway(args.port_file)
        return 0
    if not args.body_file:
        parser.error(f"{args.kind} needs --body-file")
    body = json.loads(Path(args.body_file).read_text(encoding="utf-8"))
    serve = {"starlette": serve_starlette, "raw": serve_raw, "fastapi": serve_fastapi}
    serve[args.kind](args.port_file, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
