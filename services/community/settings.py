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
    # The WeCom callback receiver (an HTTP app of this process, wecom/receiver.py): it
    # runs when the callback settings the brand entered in WeCom's admin console are
    # set (token, EncodingAESKey, corp id; the token and key are secrets, also read
    # from files, *_FILE), on this port (0: any free one).
    community_callback_port: int = 8083
    community_wecom_token: str = ""
    community_wecom_token_file: str = ""
    community_wecom_aes_key: str = ""
    community_wecom_aes_key_file: str = ""
    community_wecom_corp_id: str = ""

    def wecom_callback(self) -> tuple[str, str, str] | None:
        """(token, EncodingAESKey, corp id) of the callback receiver; None when any is
        unset (no receiver)."""
        found = (self.read_secret(self.community_wecom_token, self.community_wecom_token_file),
                 self.read_secret(self.community_wecom_aes_key,
                                  self.community_wecom_aes_key_file),
                 self.community_wecom_corp_id)
        return found if all(found) else None
