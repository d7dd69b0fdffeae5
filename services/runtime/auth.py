"""Internal auth: signed bearer tokens (JWT, PyJWT) and one table per service saying
which roles may call which method.

A token names its subject (`sub`), its role, its issuer (`iss`, the deployment's
POND_AUTH_ISSUER), the services it is for (`aud`: `pond.member`, `pond.tagging`...;
a service refuses a token that does not name it) and its expiry (`exp`, required,
with a small leeway for clock skew). Its header names the key it was signed with
(`kid`): a service accepts its current signing key and the previous keys it is
given, so a key can be rotated without refusing the tokens already out. Only the
allowed algorithms are accepted (HS256 unless configured: HMAC only, never `none`).

The gateway calls on behalf of a member: its token has role "gateway" and the member
id it verified travels in the `x-pond-member-id` metadata. A gateway call without that
id is refused before the request is read, except for the few methods a service names
as callable before sign-in (signing a customer in, brand-wide reads with no member
data). Health and reflection are the only anonymous methods.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt

from services.runtime.errors import permission_denied, unauthenticated

T = TypeVar("T")


class Role(StrEnum):
    OPERATOR = "operator"  # a person running the brand (consoles)
    GUIDE = "guide"  # a shop guide (POS, WeCom sidebar)
    SERVICE = "service"  # a machine: another service, a scheduled job
    GATEWAY = "gateway"  # the mini-program's gateway, acting for one member


# A module name: `Role.GATEWAY` is an enum class attribute lookup (a Python-level
# descriptor in 3.11), and the gateway check runs on every authorized call.
_GATEWAY = Role.GATEWAY

# The role sets every service's rule table is written with (defined only here).
ALL_ROLES = frozenset(Role)
# Decisions a person answers for: the brand's configuration (tier program, tag and
# segment definitions) and manual corrections (points adjustments). Machines
# (services, scheduled jobs) never hold this role.
OPERATORS = frozenset({Role.OPERATOR})
# Back office: operators and machines (scheduled runs, refunds from the order system).
BACK_OFFICE = frozenset({Role.OPERATOR, Role.SERVICE})
STAFF = BACK_OFFICE | {Role.GUIDE}
EVERYONE = STAFF | {Role.GATEWAY}
# Roles that see phone numbers in clear; everyone else gets 138****5678.
PHONE_VISIBLE_ROLES = BACK_OFFICE

PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
MEMBER_ID_METADATA = "x-pond-member-id"

DEFAULT_ISSUER = "pond"
# HMAC only: the keys are shared secrets. `none` and public-key algorithms are refused.
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEFAULT_ALGORITHMS = ("HS256",)
DEFAULT_LEEWAY_SECONDS = 10.0
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


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


def key_id_of(secret: str) -> str:
    """The key id of a secret configured without one: the first 12 hex digits of a
    hash of it (stable, and different for every secret)."""
    return hashlib.sha256(b"pond auth key id\0" + secret.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class AuthConfig:
    """How a deployment signs and checks tokens: the current signing key, the
    previous keys still accepted (rotation), the issuer, the allowed algorithms and
    the leeway on expiry."""

    signing_key: SigningKey
    previous_keys: tuple[SigningKey, ...] = ()
    issuer: str = DEFAULT_ISSUER
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS

    def __post_init__(self) -> None:
        if not self.signing_key.secret:
            raise ValueError("an auth secret is required (POND_AUTH_SECRET)")
        wrong = [a for a in self.algorithms if a not in HMAC_ALGORITHMS]
        if wrong or not self.algorithms:
            raise ValueError(f"token algorithms must be some of {sorted(HMAC_ALGORITHMS)}")
        ids = [k.key_id for k in self.keys()]
        if len(set(ids)) != len(ids) or not all(ids):
            raise ValueError("every auth key needs its own, non-empty key id")

    @classmethod
    def from_secret(cls, secret: str, key_id: str = "") -> AuthConfig:
        """One key (its id derived from it unless given), the default issuer."""
        return cls(SigningKey(key_id or key_id_of(secret), secret))

    def keys(self) -> tuple[SigningKey, ...]:
        return (self.signing_key, *self.previous_keys)


def previous_keys_from(text: str) -> tuple[SigningKey, ...]:
    """POND_AUTH_PREVIOUS_KEYS: one key a line, `<key id>:<secret>`, or a bare
    secret whose id is derived (key_id_of; a secret holding `:` needs its id written
    out); blank lines and `#` comments skipped."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, secret = line.partition(":")
        keys.append(SigningKey(key_id.strip(), secret.strip()) if sep else
                    SigningKey(key_id_of(line), line))
    return tuple(keys)


def audience_of(service_full_name: str) -> str:
    """A service's token audience, from its proto package:
    `pond.member.v1.MemberService` -> `pond.member` (the domain of its errors too)."""
    parts = service_full_name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else service_full_name


@functools.cache
def installed_audiences() -> tuple[str, ...]:
    """Every service of this installation (`pond.<name>` per package under
    services/, the runtime apart): the audience of a token minted without naming
    one, as `make run`'s operator token and `python -m stack.token` do. A leading
    underscore (a package kept out of the way, like an example) is not part of the name."""
    root = Path(__file__).resolve().parents[1]
    return tuple(
        f"pond.{p.name.lstrip('_')}"
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name != "runtime" and (p / "__init__.py").is_file()
    )


def mint_token(
    signer: str | AuthConfig,
    subject: str,
    role: Role | str,
    ttl_seconds: float = 3600,
    *,
    audience: str | Iterable[str] | None = None,
) -> str:
    """A token for `subject` in `role`, valid `ttl_seconds`, for `audience` (one
    service's, e.g. `pond.member`, or several; default: every installed service).
    `signer` is the deployment's AuthConfig (its current key and issuer), or a bare
    secret (its derived key id, the default issuer)."""
    config = AuthConfig.from_secret(signer) if isinstance(signer, str) else signer
    now = int(time.time())
    aud = installed_audiences() if audience is None else audience
    claims = {
        "iss": config.issuer,
        "sub": subject,
        "aud": aud if isinstance(aud, str) else list(aud),
        "role": str(Role(role)),
        "iat": now,
        "exp": int(now + ttl_seconds),
    }
    key = config.signing_key
    return jwt.encode(
        claims, key.secret, algorithm=config.algorithms[0], headers={"kid": key.key_id}
    )


class VerifiedTokens(Generic[T]):
    """Verifies JWTs signed with one AuthConfig for one audience, and remembers
    verified ones (until expiry) so a hot caller pays for the signature once, not on
    every call. `read` turns the verified claims into what the caller needs (raising
    ValueError/KeyError/TypeError for claims it cannot use); `refuse(detail, expired)`
    makes the error to raise. Services' tokens and the gateway's customer tokens both
    go through here: one place checks the algorithm before any key is used (`none`,
    RS256 or anything off the allow-list never reaches the HMAC secret), the key id,
    issuer, audience, expiry and required claims."""

    _CACHE_LIMIT = 10_000

    def __init__(
        self,
        config: AuthConfig,
        *,
        audience: str,
        read: Callable[[dict[str, Any]], T],
        refuse: Callable[[str, bool], Exception],
        required: Sequence[str] = _REQUIRED_CLAIMS,
    ) -> None:
        self._config = config
        self._keys: Mapping[str, SigningKey] = {k.key_id: k for k in config.keys()}
        self._algorithms = list(config.algorithms)
        self.audience = audience
        self._leeway = config.leeway_seconds
        self._read, self._refuse, self._required = read, refuse, list(required)
        self._cache: dict[str, tuple[T, float]] = {}

    def sign(self, claims: dict[str, Any]) -> str:
        """`claims` signed with the current key (its id in the header)."""
        key = self._config.signing_key
        return jwt.encode(
            claims, key.secret, algorithm=self._algorithms[0], headers={"kid": key.key_id}
        )

    def verify(self, token: str) -> T:
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > time.time():
                return hit[0]
            del self._cache[token]
            raise self._refuse("token expired", True)
        value, expires = self._verified(token)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = (value, expires)
        return value

    def _verified(self, token: str) -> tuple[T, float]:
        refuse = self._refuse
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise refuse("malformed token", False) from exc
        if header.get("alg") not in self._algorithms:
            raise refuse("token algorithm not allowed", False)
        key = self._keys.get(str(header.get("kid") or ""))
        if key is None:
            raise refuse("token signed with an unknown key (kid)", False)
        try:
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=self._algorithms,
                audience=self.audience,
                issuer=self._config.issuer,
                leeway=self._leeway,
                options={"require": self._required},
            )
            value = self._read(claims)
            expires = float(claims["exp"]) + self._leeway
        except jwt.ExpiredSignatureError as exc:
            raise refuse("token expired", True) from exc
        except jwt.InvalidAudienceError as exc:
            raise refuse(f"token not meant for this audience ({self.audience})", False) from exc
        except jwt.InvalidIssuerError as exc:
            raise refuse("token from another issuer", False) from exc
        except jwt.InvalidSignatureError as exc:
            raise refuse("bad token signature", False) from exc
        except (jwt.InvalidTokenError, ValueError, KeyError, TypeError) as exc:
            raise refuse("malformed token", False) from exc
        return value, expires


def _caller_of(claims: dict[str, Any]) -> Caller:
    return Caller(subject=str(claims["sub"]), role=Role(claims["role"]))


class TokenVerifier(VerifiedTokens[Caller]):
    """Verifies tokens meant for one service (`audience`): the caller and its role."""

    def __init__(self, config: AuthConfig | str, *, audience: str) -> None:
        super().__init__(
            AuthConfig.from_secret(config) if isinstance(config, str) else config,
            audience=audience,
            read=_caller_of,
            refuse=lambda detail, _expired: unauthenticated(detail),
        )


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
        # A public method stays public whatever a table says: looked up first, the
        # table answers the calls that need a token with one dict lookup.
        self._rules = {m: roles for m, roles in rules.items() if not self.is_public(m)}
        self._before_sign_in = before_sign_in

    @staticmethod
    def is_public(method: str) -> bool:
        return method.startswith(PUBLIC_METHOD_PREFIXES)

    def authorize(self, method: str, metadata: dict[str, str]) -> Caller | None:
        allowed = self._rules.get(method)  # never a public method's (see __init__)
        if allowed is None and self.is_public(method):
            return None
        header = metadata.get("authorization", "")
        if not header.startswith("Bearer "):
            raise unauthenticated("missing bearer token")
        caller = self._verifier.verify(header[7:])
        if allowed is None or caller.role not in allowed:
            raise permission_denied(f"role {caller.role} may not call {method.rsplit('/', 1)[-1]}")
        if caller.role is _GATEWAY:
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
