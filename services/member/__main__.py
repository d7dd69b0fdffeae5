"""`python -m services.member`: the member service alone, in production mode
(MongoDB from MONGODB_URI, Redis from REDIS_URL, secrets from env or files)."""

from __future__ import annotations

import asyncio
import sys

from services.member.server import start_member_service
from services.member.settings import MemberSettings
from services.runtime.logs import configure_logging, get_logger
from services.runtime.server import wait_for_termination_signal


async def main() -> int:
    settings = MemberSettings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.member")
    missing = [
        name
        for name, value in (
            ("POND_AUTH_SECRET", settings.secret()),
            ("POND_PHONE_KEY", settings.phone_key_b64()),
            ("REDIS_URL", settings.redis_url),
            ("MONGODB_URI", settings.mongodb_uri if settings.mode == "production" else "x"),
        )
        if not value
    ]
    if missing:
        log.error("missing configuration", missing=missing)
        return 2
    service = await start_member_service(settings)
    await wait_for_termination_signal()
    log.info("shutting down", grace=settings.shutdown_grace)
    await service.stop(settings.shutdown_grace)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
