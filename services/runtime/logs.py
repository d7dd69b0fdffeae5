"""structlog set-up: JSON off a TTY, console on one; request id from contextvars;
phone numbers and secrets masked by a processor that runs on every line."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

import orjson
import structlog

from services.runtime.redaction import redact_value

# The request id of the RPC being served: set once per call by the interceptor and
# added to every log line (cheaper than structlog's generic contextvars merge).
request_id_var: ContextVar[str] = ContextVar("pond_request_id", default="")


def current_request_id() -> str:
    return request_id_var.get()


def _add_request_id(_logger: object, _name: str, event_dict: dict) -> dict:
    request_id = request_id_var.get()
    if request_id:
        event_dict["request_id"] = request_id
    return event_dict


def _redact(_logger: object, _name: str, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if key in ("event", "timestamp", "level", "logger", "request_id", "method"):
            continue
        event_dict[key] = redact_value(key, value)
    event_dict["event"] = redact_value("event", event_dict.get("event", ""))
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    json_output = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    if json_output:
        # orjson renders ~10x faster than json: this line is written on every RPC.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "pond") -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
