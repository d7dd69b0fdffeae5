"""Settings shared by every service, read from the environment (pydantic-settings).

Secrets may be given inline (POND_AUTH_SECRET) or as a file path
(POND_AUTH_SECRET_FILE, e.g. a mounted Kubernetes secret); the file wins.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _read_secret(inline: str, path: str) -> str:
    if path:
        return Path(path).read_text().strip()
    return inline


class RuntimeSettings(BaseSettings):
    """Every service's settings start from these; services subclass to add their own."""

    model_config = SettingsConfigDict(env_prefix="POND_", extra="ignore")

    data_dir: Path = Path(".pond")
    host: str = "0.0.0.0"
    # "production" refuses to start without a configured auth secret and phone key.
    mode: str = "production"
    log_level: str = "info"
    # "auto": JSON when stdout is not a TTY, console otherwise.
    log_format: str = "auto"
    timezone: str = "Asia/Shanghai"
    mongodb_uri: str = Field("", validation_alias=AliasChoices("MONGODB_URI", "POND_MONGODB_URI"))
    mongodb_db: str = "pond"
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL", "POND_REDIS_URL"))
    auth_secret: str = ""
    auth_secret_file: str = ""
    # Seconds to finish in-flight calls after SIGTERM.
    shutdown_grace: float = 10.0
    # Outbox relay: publish pending events; poll interval when idle.
    outbox_relay_enabled: bool = True
    outbox_poll_seconds: float = 1.0
    # Idempotency records (first responses) are kept this long, then pruned.
    idempotency_retention_days: float = 7.0

    def secret(self) -> str:
        return _read_secret(self.auth_secret, self.auth_secret_file)

    def read_secret(self, inline: str, path: str) -> str:
        return _read_secret(inline, path)
