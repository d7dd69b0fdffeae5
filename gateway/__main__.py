"""`python -m gateway`: the gateway alone, in production (uvicorn on uvloop and
httptools, POND_GATEWAY_PORT, default 8080). Refuses to start without the secrets and
addresses it needs."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import uvicorn

from gateway.app import create_app
from gateway.server import uvicorn_config
from gateway.settings import GatewaySettings
from services.runtime.logs import configure_logging, get_logger


def main() -> int:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.gateway")
    needed = {
        "POND_AUTH_SECRET": settings.secret(),
        "POND_GATEWAY_TOKEN_SECRET": settings.read_secret(
            settings.gateway_token_secret, settings.gateway_token_secret_file),
        "REDIS_URL": settings.redis_url,
        "POND_WECHAT_APP_ID": settings.wechat_app_id,
        "POND_WECHAT_APP_SECRET": settings.wechat_secret(),
    }
    missing = sorted(name for name, value in needed.items() if not value)
    if missing:
        log.error("missing configuration", missing=missing)
        return 2
    try:
        settings.gateway_token_config()
    except ValueError as exc:
        log.error("bad configuration", error=str(exc))
        return 2
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again with the handler
    # it found: this one ends the process normally (status 0, atexit flushes the last
    # log lines) instead of being killed by it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_drain)
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()
    return 0


def _exit_after_drain(_sig: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
