"""Customers' access tokens and the `current_member` dependency.

An access token is a short-lived JWT (POND_ACCESS_TOKEN_TTL_SECONDS, 15 minutes by
default) signed with the gateway-only secret (never the services' auth secret, so a
customer's token is worth nothing to a service and a service token nothing here):
header `alg` (from the allow-list, HMAC only, never `none`) and `kid` (the key, for
rotation); claims `iss`, `aud` (POND_GATEWAY_TOKEN_AUDIENCE), `sub` (the member id),
`fam` (the refresh family it was issued with), `iat`, `exp`, `typ: "access"`. The
member id in the token is the only member the gateway acts for: no route takes a
member id, openid or phone number from the client."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import Problem
from services.runtime.auth import AuthConfig, VerifiedTokens

_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="pond"'}


@dataclass(frozen=True, slots=True)
class SignedInMember:
    member_id: str
    family: str


def unauthorized(detail: str, code: str = "UNAUTHENTICATED") -> Problem:
    return Problem(401, code, detail, headers=_WWW_AUTHENTICATE)


def _signed_in_member(claims: dict[str, Any]) -> SignedInMember:
    if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
        raise ValueError("not an access token")
    return SignedInMember(claims["sub"], str(claims.get("fam", "")))


def _refuse(detail: str, expired: bool) -> Problem:
    return unauthorized(detail, "TOKEN_EXPIRED" if expired else "UNAUTHENTICATED")


class AccessTokens:
    """Issues and verifies access tokens through the runtime's VerifiedTokens (the
    same checks and cache as the services' tokens), so a member's calls pay for the
    signature check once per token, not per request."""

    def __init__(self, config: AuthConfig, *, audience: str, ttl_seconds: int) -> None:
        self._issuer = config.issuer
        self._tokens = VerifiedTokens(
            config, audience=audience, read=_signed_in_member, refuse=_refuse, required=_REQUIRED
        )
        self.audience, self.ttl_seconds = audience, ttl_seconds

    def issue(self, member_id: str, family: str) -> str:
        now = int(time.time())
        return self._tokens.sign({
            "iss": self._issuer, "aud": self.audience, "sub": member_id, "fam": family,
            "typ": "access", "iat": now, "exp": now + self.ttl_seconds,
        })

    def verify(self, token: str) -> SignedInMember:
        return self._tokens.verify(token)


_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT",
                     description="The access token from /v1/auth/wechat-login or /v1/auth/refresh")


async def current_member(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> SignedInMember:
    """The member whose access token came with the request (401 otherwise)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("missing bearer token")
    tokens: AccessTokens = request.app.state.gateway.tokens
    return tokens.verify(credentials.credentials)


CurrentMember = Annotated[SignedInMember, Depends(current_member)]
