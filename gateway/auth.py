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
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import Problem
from services.runtime.auth import AuthConfig

_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="pond"'}


@dataclass(frozen=True, slots=True)
class SignedInMember:
    member_id: str
    family: str


def unauthorized(detail: str, code: str = "UNAUTHENTICATED") -> Problem:
    return Problem(401, code, detail, headers=_WWW_AUTHENTICATE)


class AccessTokens:
    """Issues and verifies access tokens; remembers verified ones until they expire
    (as the runtime's TokenVerifier does), so a member's calls pay for the signature
    check once per token, not per request."""

    _CACHE_LIMIT = 10_000

    def __init__(self, config: AuthConfig, *, audience: str, ttl_seconds: int) -> None:
        self._cache: dict[str, tuple[SignedInMember, float]] = {}
        self._config = config
        self._keys = {k.key_id: k for k in config.keys()}
        self._algorithms = list(config.algorithms)
        self.audience, self.ttl_seconds = audience, ttl_seconds

    def issue(self, member_id: str, family: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self._config.issuer, "aud": self.audience, "sub": member_id, "fam": family,
            "typ": "access", "iat": now, "exp": now + self.ttl_seconds,
        }
        key = self._config.signing_key
        return jwt.encode(claims, key.secret, algorithm=self._algorithms[0],
                          headers={"kid": key.key_id})

    def verify(self, token: str) -> SignedInMember:
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > time.time():
                return hit[0]
            del self._cache[token]
            raise unauthorized("token expired", "TOKEN_EXPIRED")
        member, expires = self._verified(token)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (member, expires)
        return member

    def _verified(self, token: str) -> tuple[SignedInMember, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise unauthorized("malformed token") from exc
        # Checked before any key is used: `none`, RS256 or any algorithm off the
        # allow-list never reaches a verification with the HMAC secret.
        if header.get("alg") not in self._algorithms:
            raise unauthorized("token algorithm not allowed")
        key = self._keys.get(str(header.get("kid") or ""))
        if key is None:
            raise unauthorized("token signed with an unknown key")
        try:
            claims = jwt.decode(
                token, key.secret, algorithms=self._algorithms, audience=self.audience,
                issuer=self._config.issuer, leeway=self._config.leeway_seconds,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("token expired", "TOKEN_EXPIRED") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized("invalid token") from exc
        if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
            raise unauthorized("not an access token")
        expires = float(claims["exp"]) + self._config.leeway_seconds
        return SignedInMember(claims["sub"], str(claims.get("fam", ""))), expires


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
