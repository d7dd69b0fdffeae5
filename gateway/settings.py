"""The gateway's settings (environment variables, see the README's Gateway section).

Two token secrets, never the same: POND_AUTH_SECRET signs the gateway's own calls to
the services (role "gateway", the runtime's service tokens) and POND_GATEWAY_TOKEN_SECRET
signs the customers' access tokens, which no service accepts."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator

from services.runtime.auth import AuthConfig, SigningKey, key_id_of, previous_keys_from
from services.runtime.config import RuntimeSettings

# Rate limits per route class: `class=member_limit/ip_limit/window_seconds`, comma
# separated; a limit of 0 turns that key off.
DEFAULT_RATE_LIMITS = "auth=20/60/60,read=300/1200/60,write=60/300/60"


class GatewaySettings(RuntimeSettings):
    gateway_port: int = 8080
    member_target: str = Field(
        "127.0.0.1:50051", validation_alias=AliasChoices("POND_MEMBER_TARGET", "MEMBER_TARGET")
    )
    # The community service (groups, live codes, check-in, chains); "" = not deployed:
    # its routes answer 503 COMMUNITY_NOT_CONFIGURED and /readyz does not ask it.
    community_target: str = Field(
        "", validation_alias=AliasChoices("POND_COMMUNITY_TARGET", "COMMUNITY_TARGET")
    )
    # Each gRPC call of a request ends within this (the request's deadline).
    gateway_deadline_seconds: float = 5.0
    # Customers' access tokens (JWT, HS256 by default): a gateway-only secret, its key
    # id, previous keys still accepted during a rotation (`<kid>:<secret>` a line).
    gateway_token_secret: str = ""
    gateway_token_secret_file: str = ""
    gateway_token_key_id: str = ""
    gateway_token_previous_keys: str = ""
    gateway_token_previous_keys_file: str = ""
    gateway_token_audience: str = "pond.gateway"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 86400
    # WeChat: the mini-program's app id and secret, the API's base URL (the stand-in's
    # in `make run` and the tests), the adapter's timeout.
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    wechat_app_secret_file: str = ""
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_timeout_seconds: float = 5.0
    # WeChat's server access token is renewed this long before it expires.
    wechat_token_refresh_margin_seconds: float = 300.0
    max_body_bytes: int = 64 * 1024
    rate_limits: str = DEFAULT_RATE_LIMITS
    # Comma-separated origins allowed by CORS ("" = none; the mini-program itself
    # needs none: wx.request is no browser).
    cors_origins: str = ""
    # Proxies whose X-Forwarded-For is believed (the ingress), for the per-IP limits:
    # addresses or networks (10.0.0.0/8). The client IP is the rightmost address in
    # X-Forwarded-For that is not one of them. Never "*": uvicorn then takes the
    # leftmost, which the client writes itself, and each request picks its own IP.
    forwarded_allow_ips: str = "127.0.0.1"
    # The tier programme (public, changed a few times a year) is kept this long.
    tier_program_cache_seconds: float = 10.0

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _named_proxies_only(cls, value: str) -> str:
        if "*" in (part.strip() for part in value.split(",")):
            raise ValueError("POND_FORWARDED_ALLOW_IPS: name the proxies' addresses or "
                             "networks, not '*' (the client's own X-Forwarded-For would "
                             "choose its IP and escape the per-IP limits)")
        return value

    def gateway_token_config(self) -> AuthConfig:
        """How customers' access tokens are signed and checked (ValueError when unusable,
        e.g. no secret, or the same secret as the services' tokens)."""
        secret = self.read_secret(self.gateway_token_secret, self.gateway_token_secret_file)
        if secret and secret == self.secret():
            raise ValueError("POND_GATEWAY_TOKEN_SECRET must differ from POND_AUTH_SECRET")
        if not secret:
            raise ValueError("a gateway token secret is required (POND_GATEWAY_TOKEN_SECRET)")
        previous = self.read_secret(self.gateway_token_previous_keys,
                                    self.gateway_token_previous_keys_file)
        return AuthConfig(
            SigningKey(self.gateway_token_key_id or key_id_of(secret), secret),
            previous_keys_from(previous),
            issuer=self.auth_issuer,
            algorithms=tuple(a.strip() for a in self.auth_algorithms.split(",") if a.strip()),
            leeway_seconds=self.auth_leeway_seconds,
        )

    def wechat_secret(self) -> str:
        return self.read_secret(self.wechat_app_secret, self.wechat_app_secret_file)

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
