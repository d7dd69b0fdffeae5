"""The example service's settings (environment variables)."""

from __future__ import annotations

from services.runtime.config import RuntimeSettings


class ExampleSettings(RuntimeSettings):
    example_port: int = 50099
    example_metrics_port: int = 9199
    # Another example service this one calls (Forward), e.g. "127.0.0.1:50098".
    example_peer: str = ""
    # The name a reminder's firing records (default: host and pid).
    example_replica: str = ""
    # The reminder handler takes this long (tests: replicas racing for one timer).
    example_timer_delay_seconds: float = 0.0
