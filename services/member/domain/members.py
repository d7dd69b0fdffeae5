"""Members, their identities and kinds."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import IntEnum


class MemberKind(IntEnum):
    UNSPECIFIED = 0
    REGISTERED = 1
    CONSUMING = 2
    CO_BRANDED = 3
    STORED_VALUE = 4
    PAID = 5


class IdentityKind(IntEnum):
    UNSPECIFIED = 0
    PHONE = 1
    WECHAT_UNIONID = 2
    WECHAT_OPENID = 3
    WECOM_EXTERNAL_USERID = 4


class Gender(IntEnum):
    UNSPECIFIED = 0
    MALE = 1
    FEMALE = 2
    OTHER = 3


# pond.common.v1.Channel: 1..10 are valid acquisition / order channels.
VALID_CHANNELS = range(1, 11)
# pond.common.v1.ContactChannel
VALID_CONTACT_CHANNELS = range(1, 6)

_PHONE_RE = re.compile(r"^1[3-9]\d{9}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-.:@]{1,128}$")


@dataclass(frozen=True, slots=True)
class Identity:
    """An identity as stored. For phones `value` is ciphertext and `lookup` is the
    keyed hash; for the others `value` is the plain id. `lookup` is unique across
    members."""

    kind: IdentityKind
    lookup: str
    value: str
    app_id: str = ""


@dataclass(slots=True)
class Member:
    id: str
    identities: list[Identity]
    created_at: datetime
    updated_at: datetime
    name: str = ""
    gender: Gender = Gender.UNSPECIFIED
    birthday: str = ""
    city: str = ""
    store_id: str = ""
    guide_id: str = ""
    channel: int = 0
    referrer_id: str = ""
    # contact channel -> (granted, when)
    consents: dict[int, tuple[bool, datetime]] = field(default_factory=dict)
    co_branded: bool = False
    paid_until: datetime | None = None
    stored_value_opened: bool = False
    kind: MemberKind = MemberKind.REGISTERED
    tier_level: int = 0
    tier_since: datetime | None = None
    growth_value: int = 0
    points_balance: int = 0
    stored_value_fen: int = 0
    paid_order_count: int = 0
    total_spent_fen: int = 0
    first_paid_at: datetime | None = None
    last_paid_at: datetime | None = None
    version: int = 0

    def copy(self) -> Member:
        return replace(self, identities=list(self.identities), consents=dict(self.consents))


def normalize_phone(raw: str) -> str | None:
    """Mainland mobile numbers: 11 digits starting 13-19, optional +86/86 and spaces
    or dashes. Returns the 11 digits, or None when it is not one."""
    digits = re.sub(r"[\s\-]", "", raw)
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if _PHONE_RE.match(digits) else None


def identity_lookup(kind: IdentityKind, value: str, app_id: str = "") -> str:
    """The unique key of a non-phone identity (phones use the keyed hash)."""
    if kind is IdentityKind.WECHAT_OPENID:
        return f"openid:{app_id}:{value}"
    return f"{kind.name.lower()}:{value}"


def identity_problem(kind: int, value: str, app_id: str) -> str | None:
    """Why an identity is malformed, or None. Phones are checked by normalize_phone."""
    if kind not in (k.value for k in IdentityKind) or kind == 0:
        return "kind must be PHONE, WECHAT_UNIONID, WECHAT_OPENID or WECOM_EXTERNAL_USERID"
    if kind == IdentityKind.PHONE:
        return None if normalize_phone(value) else "is not a valid mainland mobile number"
    if not _TOKEN_RE.match(value):
        return "must be 1-128 characters of letters, digits and _-.:@"
    if kind == IdentityKind.WECHAT_OPENID and not _TOKEN_RE.match(app_id):
        return "an openid needs the app_id of its mini-program or official account"
    return None


def birthday_endings(today: date) -> tuple[str, ...]:
    """The birthdays celebrated on `today`, as the "-MM-DD" ending of a YYYY-MM-DD
    birthday: members born on 29 February celebrate on the 28th in other years."""
    ending = today.strftime("-%m-%d")
    if (today.month, today.day) == (2, 28) and not calendar.isleap(today.year):
        return (ending, "-02-29")
    return (ending,)


def birthday_problem(text: str) -> str | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return "must be YYYY-MM-DD"
    return None if day.year >= 1900 else "is before 1900"


def derive_kind(member: Member, now: datetime, consuming_threshold: int) -> MemberKind:
    """One kind shown per member, the most committed relationship first; a paid
    membership lapses back to whatever else holds once its end date passes."""
    if member.paid_until is not None and member.paid_until > now:
        return MemberKind.PAID
    if member.stored_value_opened:
        return MemberKind.STORED_VALUE
    if member.co_branded:
        return MemberKind.CO_BRANDED
    if member.paid_order_count >= consuming_threshold:
        return MemberKind.CONSUMING
    return MemberKind.REGISTERED


UPDATABLE_PATHS = frozenset(
    {
        "profile",
        "profile.name",
        "profile.gender",
        "profile.birthday",
        "profile.city",
        "store_id",
        "guide_id",
        "referrer_id",
        "consents",
        "co_branded",
    }
)
