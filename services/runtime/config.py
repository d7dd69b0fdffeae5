"""Settings shared by every service, read from the environment (pydantic-settings).

Secrets may be given inline (POND_AUTH_SECRET) or as a file path
(POND_AUTH_SECRET_FILE, e.g. a mounted Kubernetes secret); the file wins.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.auth import (
    DEFAULT_ISSUER,
    DEFAULT_LEEWAY_SECONDS,
    AuthConfig,
    SigningKey,
    key_id_of,
    previous_keys_from,
)

# Largest request a gRPC server takes (a bigger one is RESOURCE_EXHAUSTED before any
# of it is decoded), and how many calls one client connection may have open at once.
DEFAULT_MAX_RECEIVE_BYTES = 4 << 20
DEFAULT_MAX_CONCURRENT_STREAMS = 100


def page_key_from(paging_secret: str, auth_secret: str) -> bytes:
    """The paging secret's bytes, or a key derived from the auth secret (never the
    auth secret itself: a page token must not be a signing oracle for tokens)."""
    if paging_secret:
        return paging_secret.encode()
    return hmac.new(auth_secret.encode(), b"pond page tokens", hashlib.sha256).digest()


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
    # Bearer tokens: the current signing key (its id: POND_AUTH_KEY_ID, derived from
    # the secret when unset), previous keys still accepted during a rotation (one a
    # line, `<key id>:<secret>`), the issuer, the allowed algorithms, the leeway.
    auth_secret: str = ""
    auth_secret_file: str = ""
    auth_key_id: str = ""
    auth_previous_keys: str = ""
    auth_previous_keys_file: str = ""
    auth_issuer: str = DEFAULT_ISSUER
    auth_algorithms: str = "HS256"
    auth_leeway_seconds: float = DEFAULT_LEEWAY_SECONDS
    # Signs page tokens; unset: derived from the auth secret (a rotation of the auth
    # key then ends paging sessions under way, which start again from page one).
    paging_secret: str = ""
    paging_secret_file: str = ""
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    # Seconds to finish in-flight calls after SIGTERM.
    shutdown_grace: float = 10.0
    # Outbox relay: publish pending events; poll interval when idle.
    outbox_relay_enabled: bool = True
    outbox_poll_seconds: float = 1.0
    # After each publish the relay lets this long's commits gather, so that under load
    # one script call carries many events (the most an event waits for it).
    outbox_coalesce_seconds: float = Field(default=0.01, ge=0, le=1)
    # The relay's lease (one publisher per service): a killed leader's successor
    # takes over within this and a third of it.
    outbox_lease_seconds: float = 10.0
    # Event consumers: a delivery idle this long is reclaimed and retried; after this
    # many deliveries it is dead-lettered (a service's consumer may say otherwise).
    event_claim_idle_ms: int = 30_000
    event_max_deliveries: int = 5
    # How long one read waits for new events (also how long a stop may wait for it).
    event_block_ms: int = 1000
    # Processed-event marks (each consumer applies an event once) are kept this long.
    processed_retention_days: float = 7.0
    # Off: this process runs no scheduled jobs (another replica does; tests that move
    # the clock by hand and run the jobs' work themselves).
    jobs_enabled: bool = True
    # 0: each scheduled job on its own schedule; N: every job at every whole multiple
    # of N seconds after local midnight (the dev stack's default: hourly).
    jobs_interval_seconds: float = 0.0
    # Idempotency records (first responses) are kept this long, then pruned.
    idempotency_retention_days: float = 7.0

    def secret(self) -> str:
        return _read_secret(self.auth_secret, self.auth_secret_file)

    def auth_config(self) -> AuthConfig:
        """How this deployment signs and checks tokens (ValueError when unusable)."""
        secret = self.secret()
        return AuthConfig(
            SigningKey(self.auth_key_id or key_id_of(secret), secret),
            previous_keys_from(_read_secret(self.auth_previous_keys, self.auth_previous_keys_file)),
            issuer=self.auth_issuer,
            algorithms=tuple(a.strip() for a in self.auth_algorithms.split(",") if a.strip()),
            leeway_seconds=self.auth_leeway_seconds,
        )

    def page_key(self) -> bytes:
        """The key page tokens are signed with (paging.py)."""
        return page_key_from(self.read_secret(self.paging_secret, self.paging_secret_file),
                             self.secret())

    def read_secret(self, inline: str, path: str) -> str:
        return _read_secret(inline, path)
