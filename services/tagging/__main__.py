"""`python -m services.tagging`: the tagging service alone, in production mode."""

from __future__ import annotations

import asyncio
import sys

from services.runtime.logs import configure_logging, get_logger
from services.runtime.server import wait_for_termination_signal
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings


async def main() -> int:
    settings = TaggingSettings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.tagging")
    missing = [
        name
        for name, value in (
            ("POND_AUTH_SECRET", settings.secret()),
            ("REDIS_URL", settings.redis_url),
            ("MONGODB_URI", settings.mongodb_uri if settings.mode == "production" else "x"),
        )
        if not value
    ]
    if missing:
        log.error("missing configuration", missing=missing)
        return 2
    service = await start_tagging_service(settings)
    await wait_for_termination_signal()
    await service.stop(settings.shutdown_grace)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
