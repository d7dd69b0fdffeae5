"""The one way a service runs alone in production (`python -m services.<name>`):
read settings, refuse to start without what production needs, host the service
until SIGTERM, then stop it in order (host.py)."""

from __future__ import annotations

import sys
from typing import Any

from services.runtime.host import ServiceSpec, start_service
from services.runtime.logs import configure_logging, get_logger
from services.runtime.loop import run
from services.runtime.server import tune_heap_for_serving, wait_for_termination_signal


async def serve(spec: ServiceSpec[Any]) -> int:
    """MONGODB_URI is required in production mode only (embedded mode uses SQLite)."""
    settings = spec.settings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.service")
    needed = dict(spec.required(settings), POND_AUTH_SECRET=settings.secret(),
                  REDIS_URL=settings.redis_url)
    if settings.mode == "production":
        needed["MONGODB_URI"] = settings.mongodb_uri
    missing = sorted(name for name, value in needed.items() if not value)
    if missing:
        log.error("missing configuration", missing=missing)
        return 2
    host = await start_service(spec, settings)
    tune_heap_for_serving()
    await wait_for_termination_signal()
    log.info("shutting down", grace=settings.shutdown_grace)
    await host.stop(settings.shutdown_grace)
    return 0


def main(spec: ServiceSpec[Any]) -> None:
    sys.exit(run(serve(spec)))
