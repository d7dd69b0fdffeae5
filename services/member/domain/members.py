"""Members, their identities and kinds."""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
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

# ASCII only: after NFKC, digits of other scripts (Arabic-Indic, Devanagari...) remain
# digits to `\d`; they are refused rather than read as a second spelling of a number.
_PHONE_RE = re.compile(r"(?:\+?86)?(1[3-9][0-9]{9})")
_PHONE_SEPARATORS = re.compile(r"[ \-]")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.:@]{1,128}")
# No ':' in an app id: the openid lookup key is "openid:<app id>:<openid>", and a ':'
# in the app id would let (app "wxK:x", "o1") and (app "wxK", "x:o1") share a key.
_APP_ID_RE = re.compile(r"[A-Za-z0-9_\-.@]{1,128}")
# The kinds that WeChat itself vouches for when a customer signs in through the
# mini-program (code2session gives the openid and unionid).
WECHAT_KINDS = frozenset({IdentityKind.WECHAT_UNIONID, IdentityKind.WECHAT_OPENID})


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
    nickname: str = ""
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
    # Set once the member was merged into another (domain/merging.py): the survivor.
    merged_into: str = ""
    # Ids of the members merged into this one (their merged_into names it), so a later
    # merge of this member re-points them to the new survivor: never a chain.
    absorbed: list[str] = field(default_factory=list)
    version: int = 0

    def copy(self) -> Member:
        return replace(
            self,
            identities=list(self.identities),
            consents=dict(self.consents),
            absorbed=list(self.absorbed),
        )


def _has_control(text: str) -> bool:
    # Cc control, Cf format (zero-width space, bidi marks), Cs/Co/Cn: never in an id.
    return any(unicodedata.category(c).startswith("C") for c in text)


def normalize_phone(raw: str) -> str | None:
    """Mainland mobile numbers: 11 ASCII digits starting 13-19 (after NFKC, so
    fullwidth digits count), optional +86/86, spaces or dashes. Returns the 11
    digits, or None when it is not one."""
    if len(raw) > 32:  # "+86 138-1234-5678" is 17: no need to normalise a novel
        return None
    text = unicodedata.normalize("NFKC", raw)
    if _has_control(text):
        return None
    found = _PHONE_RE.fullmatch(_PHONE_SEPARATORS.sub("", text))
    return found.group(1) if found else None


def _phone_problem(raw: str) -> str | None:
    if normalize_phone(raw):
        return None
    text = unicodedata.normalize("NFKC", raw)
    if _has_control(text):
        return "must not contain control characters"
    if any(c.isdigit() and not c.isascii() for c in text):
        return "must be written with the digits 0-9"
    return "is not a valid mainland mobile number"


def _id_problem(raw: str, pattern: re.Pattern[str], what: str) -> str | None:
    if not 0 < len(raw) <= 128:
        return f"{what} must be 1-128 characters"
    if raw != raw.strip():
        return f"{what} must not start or end with whitespace"
    if _has_control(raw):
        return f"{what} must not contain control characters"
    if not pattern.fullmatch(unicodedata.normalize("NFKC", raw)):
        allowed = "_-.:@" if pattern is _TOKEN_RE else "_-.@"
        return f"{what} must be 1-128 characters of letters, digits and {allowed}"
    return None


def identity_problem(kind: int, value: str, app_id: str) -> str | None:
    """Why an identity is malformed, or None."""
    if kind not in (k.value for k in IdentityKind) or kind == 0:
        return "kind must be PHONE, WECHAT_UNIONID, WECHAT_OPENID or WECOM_EXTERNAL_USERID"
    if kind == IdentityKind.PHONE:
        return _phone_problem(value)
    problem = _id_problem(value, _TOKEN_RE, "value")
    if problem is None and kind == IdentityKind.WECHAT_OPENID:
        if not app_id:
            return "an openid needs the app_id of its mini-program or official account"
        problem = _id_problem(app_id, _APP_ID_RE, "app_id")
    return problem


def canonical_identity(kind: IdentityKind, value: str, app_id: str = "") -> tuple[str, str]:
    """(value, app_id) of a well-formed identity (see identity_problem) in the one
    spelling that is stored and looked up: a phone's 11 digits, ids in NFKC; the
    app id only for openids."""
    if kind is IdentityKind.PHONE:
        return normalize_phone(value) or "", ""
    app = unicodedata.normalize("NFKC", app_id) if kind is IdentityKind.WECHAT_OPENID else ""
    return unicodedata.normalize("NFKC", value), app


def identity_lookup(kind: IdentityKind, value: str, app_id: str = "") -> str:
    """The unique key of a non-phone identity (phones use the keyed hash). Unambiguous
    because app ids hold no ':' (refused on input); stored keys keep this format."""
    if kind is IdentityKind.WECHAT_OPENID:
        return f"openid:{app_id}:{value}"
    return f"{kind.name.lower()}:{value}"


@dataclass(frozen=True, slots=True)
class IdentityTrust:
    """What a caller's identities prove, and what it may learn of other members.

    `proving`: kinds that identify an existing member (registering with one returns
    its owner). An identity of another kind is only a claim: it may be added to the
    member the proving identities name (or to a new one) while nobody owns it, and
    never leads to its owner. `sees_owners`: errors may name the member that owns an
    identity."""

    proving: frozenset[IdentityKind] = frozenset(IdentityKind)
    sees_owners: bool = True


class IdentityConflict(Exception):
    """Presented identities that cannot all go to one member; `owners` are the members
    concerned (only callers that see owners are told)."""

    def __init__(self, reason: str, owners: list[str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.owners = owners


def registration_owner(
    presented: list[tuple[IdentityKind, str | None]], trust: IdentityTrust
) -> str | None:
    """The member that a registration's identities identify, or None for a new one.
    `presented`: each identity's kind and current owner (None: free)."""
    identified = sorted({o for k, o in presented if o and k in trust.proving})
    if len(identified) > 1:
        raise IdentityConflict("IDENTITIES_BELONG_TO_DIFFERENT_MEMBERS", identified)
    owner = identified[0] if identified else None
    claimed = sorted({o for k, o in presented if o and k not in trust.proving and o != owner})
    if claimed:
        raise IdentityConflict("IDENTITY_TAKEN", claimed)
    return owner


def birthday_endings(today: date) -> tuple[str, ...]:
    """The birthdays celebrated on `today`, as the "-MM-DD" ending of a YYYY-MM-DD
    birthday: members born on 29 February celebrate on the 28th in other years."""
    ending = today.strftime("-%m-%d")
    if (today.month, today.day) == (2, 28) and not calendar.isleap(today.year):
        return (ending, "-02-29")
    return (ending,)


# The latest date anywhere on Earth is UTC+14: a birthday up to that day is not in
# the future for somebody, whatever the brand's time zone.
LATEST_OFFSET = timedelta(hours=14)


def birthday_problem(text: str, now: datetime) -> str | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return "must be YYYY-MM-DD"
    if day.year < 1900:
        return "is before 1900"
    return "is in the future" if day > (now + LATEST_OFFSET).date() else None


NICKNAME_MAX = 32


def nickname_problem(text: str) -> str | None:
    """A nickname is 1-32 characters after NFKC (what the mini-program shows), with no
    control or format characters; empty clears it."""
    if not text:
        return None
    normal = unicodedata.normalize("NFKC", text).strip()
    if _has_control(normal):
        return "must not contain control characters"
    if not 1 <= len(normal) <= NICKNAME_MAX:
        return f"must be 1-{NICKNAME_MAX} characters"
    return None


def normalize_nickname(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


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


PROFILE_PATHS = frozenset(
    {
        "profile",
        "profile.name",
        "profile.nickname",
        "profile.gender",
        "profile.birthday",
        "profile.city",
    }
)
UPDATABLE_PATHS = frozenset(
    {
        "profile",
        "profile.name",
        "profile.nickname",
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
