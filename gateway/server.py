"""The gateway on uvicorn (uvloop, httptools): `python -m gateway` in production,
and `gateway_server` for what runs it inside another process (`make run`, tests,
benchmarks) on a given or free port, without taking the process's signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.state import Gateway


def uvicorn_config(app: Any, settings: GatewaySettings, port: int | None = None,
                   **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.gateway_port if port is None else port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        access_log=False,  # the canonical line per request is the gateway's own
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the host process handles its own signals


class EmbeddedServer:
    """An ASGI app served by uvicorn on the running event loop (a host's, uvloop or
    not): `await start()`, `.port`, `.url`, `await stop()`."""

    def __init__(self, app: Any, config: uvicorn.Config) -> None:
        self.app = app
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> EmbeddedServer:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # start-up failed: raise its error
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self._server.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None


def gateway_server(settings: GatewaySettings, *, port: int | None = None,
                   gateway: Gateway | None = None) -> EmbeddedServer:
    """The gateway inside another process (`make run`, tests, benchmarks); port 0:
    a free one."""
    app = create_app(settings, gateway=gateway)
    # loop="none": the running loop is the host's; uvicorn must not set one.
    return EmbeddedServer(app, uvicorn_config(app, settings, port, loop="none"))
