"""The community service's settings (environment variables POND_COMMUNITY_*, see the
README table)."""

from __future__ import annotations

from services.runtime.config import RuntimeSettings


class CommunitySettings(RuntimeSettings):
    community_port: int = 50053
    community_metrics_port: int = 9103
    # Where the member service (tiers, purchases: entry rules and routing by tier) and
    # the tagging service (tags and segments) answer, as host:port.
    community_member_target: str = "127.0.0.1:50051"
    community_tagging_target: str = "127.0.0.1:50052"
    # Where due column posts go: "log" (the dev adapter logs them) or "off" (another
    # process, e.g. the WeCom adapter, consumes ColumnPostDue).
    community_channel: str = "log"
