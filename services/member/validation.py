"""Input checks of the member API: each adds field violations (never raises on its
own) and returns the value in domain terms, so one call reports every problem."""

from __future__ import annotations

from datetime import datetime, timedelta

from pond.member.v1 import member_pb2 as pb

from services.member.domain import members as dm
from services.member.domain.members import Gender, IdentityKind
from services.member.service import NewIdentity
from services.runtime.errors import Violations
from services.runtime.logs import current_request_id

MAX_ID = 128
MAX_TEXT = 256
MAX_POINTS = 1_000_000_000
MAX_FEN = 10_000_000_000  # 100 million yuan
MAX_ITEMS = 200
MAX_IDENTITIES = 8
# POS clocks drift: a paid time a few minutes ahead is accepted.
FUTURE_SLACK = timedelta(minutes=10)


def request_id() -> str:
    return current_request_id()


def text(
    v: Violations, path: str, value: str, *, required: bool = False, limit: int = MAX_ID
) -> None:
    if required and not value:
        v.add(path, "is required")
    elif len(value) > limit:
        v.add(path, f"must be at most {limit} characters")


def enum(v: Violations, path: str, value: int, valid, *, required: bool = False) -> None:
    if value == 0 and required:
        v.add(path, "is required")
    elif value != 0 and value not in valid:
        v.add(path, f"unknown value {value}")


def positive(v: Violations, path: str, value: int, limit: int) -> None:
    if not 0 < value <= limit:
        v.add(path, f"must be between 1 and {limit}")


def identity(v: Violations, path: str, ident: pb.Identity) -> NewIdentity | None:
    """The identity in its one stored spelling (NFKC, a phone's 11 ASCII digits), so
    that variants of the same id find the same member; None (and a violation) when
    malformed (control characters, surrounding whitespace, ':' in an app id...)."""
    problem = dm.identity_problem(ident.kind, ident.value, ident.app_id)
    if problem:
        v.add(path, problem)
        return None
    kind = IdentityKind(ident.kind)
    return NewIdentity(kind, *dm.canonical_identity(kind, ident.value, ident.app_id))


def profile_fields(
    v: Violations, p: pb.Profile, prefix: str, paths: set[str], now: datetime
) -> dict:
    """The profile attributes named by `paths` (all of them when empty), checked;
    violations are reported under `prefix` (the request's field path)."""

    def wanted(name: str) -> bool:
        return not paths or bool({"profile", f"profile.{name}"} & paths)

    out: dict = {}
    if wanted("name"):
        text(v, f"{prefix}.name", p.name, limit=64)
        out["name"] = p.name.strip()
    if wanted("nickname"):
        problem = dm.nickname_problem(p.nickname)
        if problem:
            v.add(f"{prefix}.nickname", problem)
        out["nickname"] = dm.normalize_nickname(p.nickname)
    if wanted("gender"):
        enum(v, f"{prefix}.gender", p.gender, [g.value for g in Gender])
        known = p.gender in Gender._value2member_map_
        out["gender"] = Gender(p.gender) if known else Gender.UNSPECIFIED
    if wanted("birthday"):
        problem = dm.birthday_problem(p.birthday, now)
        if problem:
            v.add(f"{prefix}.birthday", problem)
        out["birthday"] = p.birthday
    if wanted("city"):
        text(v, f"{prefix}.city", p.city, limit=64)
        out["city"] = p.city.strip()
    return out


def consents(v: Violations, consents, now: datetime) -> dict[int, tuple[bool, datetime]]:
    out = {}
    for i, c in enumerate(consents):
        enum(v, f"consents[{i}].channel", c.channel, dm.VALID_CONTACT_CHANNELS, required=True)
        out[c.channel] = (c.granted, now)
    return out
