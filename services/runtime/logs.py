"""structlog set-up: JSON off a TTY, console on one; request id from contextvars;
phone numbers and secrets masked by a processor that runs on every line."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, Processor

from services.runtime.redaction import redact_value

# The request id of the RPC being served: set once per call by the interceptor and
# added to every log line (cheaper than structlog's generic contextvars merge).
request_id_var: ContextVar[str] = ContextVar("pond_request_id", default="")


def current_request_id() -> str:
    return request_id_var.get()


def _add_request_id(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    request_id = request_id_var.get()
    if request_id:
        event_dict["request_id"] = request_id
    return event_dict


_second_text: tuple[int, str] = (-1, "")


def _add_timestamp(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    """2026-11-22T10:11:08.123456Z, as structlog's TimeStamper(fmt="iso", utc=True)
    writes it, at a fraction of the cost: the date and time are formatted once a
    second, only the microseconds on every line."""
    event_dict["timestamp"] = _timestamp(time.time())
    return event_dict


def _timestamp(now: float) -> str:
    global _second_text
    second = int(now)
    if second != _second_text[0]:
        _second_text = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second_text[1]}.{int((now - second) * 1e6):06d}Z"


def _redact(_logger: object, _name: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if key in ("event", "timestamp", "level", "logger", "request_id", "method"):
            continue
        event_dict[key] = redact_value(key, value)
    event_dict["event"] = redact_value("event", event_dict.get("event", ""))
    return event_dict


# Where log_rpc writes its JSON lines directly; None when it goes through structlog.
class RpcLog:
    """The per-RPC canonical lines in JSON mode: each call appends its fields to a
    list, and the event loop formats and writes the lines in one batch at most every
    `flush_seconds` (at exit too).

    Formatting a line per call through structlog and writing it cost ~30 µs of a
    busy server's ~400 µs per call (bench.tagging's CheckMembership windows), most
    of it in caches gone cold between calls; a batch is formatted in a warm loop for
    a fraction of that. Each line keeps the time of its call; a process killed
    outright loses at most the last `flush_seconds` of RPC lines.

    The values need neither JSON escaping nor redaction: method and code are the
    server's own names, and the request id is one the interceptor accepted
    (letters, digits and ._:- only)."""

    def __init__(self, stream: BinaryIO, flush_seconds: float = 0.1) -> None:
        self._stream = stream
        self._flush_seconds = flush_seconds
        self._pending: list[tuple[float, str, str, float, str]] = []  # at, ..., seconds, id
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where a flush is due
        atexit.register(self.flush)

    def add(self, method: str, code: str, seconds: float) -> None:
        """`seconds`: the call's duration; written in milliseconds (rounded in the
        batch, not on the call's path)."""
        self._pending.append((time.time(), method, code, seconds, request_id_var.get()))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if loop is not self._flush_loop:
            self._flush_loop = loop
            loop.call_later(self._flush_seconds, self.flush)

    def flush(self) -> None:
        self._flush_loop = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        text = "".join(
            f'{{"method":"{method}","code":"{code}","ms":{_ms(seconds)},'
            f'"event":"rpc","request_id":"{request_id}","level":"info",'
            f'"timestamp":"{_timestamp(at)}"}}\n'
            for at, method, code, seconds, request_id in pending
        )
        try:
            self._stream.write(text.encode())
            self._stream.flush()
        except (OSError, ValueError) as exc:  # stdout closed or full: drop, never fail a call
            _unwritable(exc)


def _ms(seconds: float) -> str:
    """Milliseconds to the microsecond, "12.034": integer arithmetic, a fraction of
    the cost of rounding and printing a float (once per RPC line)."""
    micros = int(seconds * 1_000_000 + 0.5)
    return f"{micros // 1000}.{micros % 1000:03d}"


# Where log_rpc puts its lines in JSON mode; None when they go through structlog.
_rpc_log_batch: RpcLog | None = None
_rpc_log = structlog.get_logger("pond.rpc")


def log_rpc(method: str, code: str, seconds: float) -> None:
    """The canonical line of one RPC: method, status code, duration (written in
    milliseconds, `ms`), request id."""
    batch = _rpc_log_batch
    if batch is not None:
        batch.add(method, code, seconds)
        return
    try:
        _rpc_log.info("rpc", method=method, code=code, ms=round(seconds * 1000, 3))
    except (OSError, ValueError) as exc:  # as in RpcLog.flush: a log line never fails a call
        _unwritable(exc)


def _unwritable(exc: Exception) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"pond: RPC log lines dropped, stdout is not writable: {exc!r}\n")


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    global _rpc_log_batch, _rpc_log
    json_output = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    if _rpc_log_batch is not None:
        _rpc_log_batch.flush()
    _rpc_log_batch = None
    _rpc_log = structlog.get_logger("pond.rpc")  # a proxy made before keeps its first config
    if json_output:
        # orjson renders ~10x faster than json: this line is written on every RPC.
        renderer: Processor = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory: Callable[..., Any] = structlog.BytesLoggerFactory(sys.stdout.buffer)
        if threshold <= logging.INFO:
            _rpc_log_batch = RpcLog(sys.stdout.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[
            _add_request_id,
            structlog.processors.add_log_level,
            _add_timestamp,
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "pond") -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
