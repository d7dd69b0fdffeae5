"""Internal auth: HS256-signed bearer tokens (JWT format) with a subject, a role and
an expiry, and one table per service saying which roles may call which method.

The gateway calls on behalf of a member: its token has role "gateway" and the member
id it verified travels in the `x-pond-member-id` metadata. A gateway call without that
id is refused before the request is read, except for the few methods a service names
as callable before sign-in (signing a customer in, brand-wide reads with no member
data). Health and reflection are the only anonymous methods.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from services.runtime.errors import permission_denied, unauthenticated


class Role(StrEnum):
    OPERATOR = "operator"
    GUIDE = "guide"
    SERVICE = "service"
    GATEWAY = "gateway"


ALL_ROLES = frozenset(Role)
STAFF = frozenset({Role.OPERATOR, Role.GUIDE, Role.SERVICE})
BACK_OFFICE = frozenset({Role.OPERATOR, Role.SERVICE})
# Roles that see phone numbers in clear; everyone else gets 138****5678.
PHONE_VISIBLE_ROLES = frozenset({Role.OPERATOR, Role.SERVICE})

PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
MEMBER_ID_METADATA = "x-pond-member-id"


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str
    role: Role
    # For the gateway: the member it verified and acts for.
    member_id: str = ""

    @property
    def sees_phone(self) -> bool:
        return self.role in PHONE_VISIBLE_ROLES


current_caller: ContextVar[Caller | None] = ContextVar("pond_caller", default=None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())


def mint_token(secret: str, subject: str, role: Role | str, ttl_seconds: float = 3600) -> str:
    if not secret:
        raise ValueError("an auth secret is required to mint tokens")
    claims = {"sub": subject, "role": str(Role(role)), "exp": int(time.time() + ttl_seconds)}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{_HEADER}.{payload}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{_HEADER}.{payload}.{_b64(signature)}"


class TokenVerifier:
    """Verifies tokens; remembers verified ones (until expiry) so a hot caller pays
    the HMAC once, not on every call."""

    _CACHE_LIMIT = 10_000

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()
        self._cache: dict[str, tuple[Caller, float]] = {}

    def verify(self, token: str) -> Caller:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._cache[token]
            raise unauthenticated("token expired")
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                raise unauthenticated("bad token signature")
            claims = json.loads(_unb64(payload))
            caller = Caller(subject=str(claims["sub"]), role=Role(claims["role"]))
            expires = float(claims["exp"])
        except (ValueError, KeyError, TypeError) as exc:
            raise unauthenticated("malformed token") from exc
        if expires <= now:
            raise unauthenticated("token expired")
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (caller, expires)
        return caller


class Authorizer:
    """Applies one service's table of method -> allowed roles. A method missing from
    the table is denied: new RPCs are closed until someone writes their rule.

    A gateway caller must name the member it verified, except on the methods in
    `before_sign_in` (full names): without a member, a handler's check that the
    gateway acts for the member concerned would have nothing to compare."""

    def __init__(
        self,
        verifier: TokenVerifier,
        rules: dict[str, frozenset[Role]],
        before_sign_in: frozenset[str] = frozenset(),
    ) -> None:
        self._verifier = verifier
        self._rules = rules
        self._before_sign_in = before_sign_in

    @staticmethod
    def is_public(method: str) -> bool:
        return method.startswith(PUBLIC_METHOD_PREFIXES)

    def authorize(self, method: str, metadata: dict[str, str]) -> Caller | None:
        if self.is_public(method):
            return None
        header = metadata.get("authorization", "")
        if not header.startswith("Bearer "):
            raise unauthenticated("missing bearer token")
        caller = self._verifier.verify(header[7:])
        allowed = self._rules.get(method)
        if allowed is None or caller.role not in allowed:
            raise permission_denied(f"role {caller.role} may not call {method.rsplit('/', 1)[-1]}")
        if caller.role is Role.GATEWAY:
            member_id = metadata.get(MEMBER_ID_METADATA, "")
            if not member_id and method not in self._before_sign_in:
                raise permission_denied(
                    f"the gateway must name the member it verified ({MEMBER_ID_METADATA})"
                )
            caller = Caller(caller.subject, caller.role, member_id)
        return caller


def ensure_acts_for(member_id: str) -> None:
    """The gateway may only touch the member whose token it verified: never a call
    without that member, nor one about no member in particular (member_id "", which
    list methods read as "every member")."""
    caller = current_caller.get()
    if (
        caller is not None
        and caller.role is Role.GATEWAY
        and (not caller.member_id or caller.member_id != member_id)
    ):
        raise permission_denied("the gateway may only act for the member it verified")


def method_rules(
    service_full_name: str, rules: dict[str, frozenset[Role]]
) -> dict[str, frozenset[Role]]:
    """{"GetMember": roles} -> {"/pond.member.v1.MemberService/GetMember": roles}."""
    return {f"/{service_full_name}/{name}": roles for name, roles in rules.items()}
