"""The one way a service runs alone in production (`python -m services.<name>`):
read settings, refuse to start without what production needs, serve until SIGTERM,
then stop with grace."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from services.runtime.config import RuntimeSettings
from services.runtime.logs import configure_logging, get_logger
from services.runtime.server import freeze_startup_heap, wait_for_termination_signal


async def serve(
    settings: RuntimeSettings, start: Callable[[Any], Awaitable[Any]], required: dict[str, str]
) -> int:
    """`required`: env var name -> its configured value; empty values stop start-up.
    MONGODB_URI is required in production mode only (embedded mode uses SQLite)."""
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.service")
    needed = dict(required, POND_AUTH_SECRET=settings.secret(), REDIS_URL=settings.redis_url)
    if settings.mode == "production":
        needed["MONGODB_URI"] = settings.mongodb_uri
    missing = sorted(name for name, value in needed.items() if not value)
    if missing:
        log.error("missing configuration", missing=missing)
        return 2
    service = await start(settings)
    freeze_startup_heap()
    await wait_for_termination_signal()
    log.info("shutting down", grace=settings.shutdown_grace)
    await service.stop(settings.shutdown_grace)
    return 0


def main(
    settings_factory: Callable[[], RuntimeSettings],
    start: Callable[[Any], Awaitable[Any]],
    required: Callable[[Any], dict[str, str]] = lambda _s: {},
) -> None:
    settings = settings_factory()
    sys.exit(asyncio.run(serve(settings, start, required(settings))))
