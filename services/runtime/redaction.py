"""Masking for values that must never appear in clear in logs or responses."""

from __future__ import annotations

import re
from functools import lru_cache

# A phone number as people and tools write it: a mainland mobile number (11 digits,
# 1[3-9]xxxxxxxxx) after any country code (+86, 0086, +91, or digits glued on: 86,
# 91), split by anything that is not a letter or a digit ([\W_]): 138 1234 5678,
# 138-1234-5678, 138.1234.5678, 138_1234_5678, 138:1234:5678, (138)1234/5678,
# 918491259190. It is not glued to more digits: 20261130123456 or the digits in a
# UUID are not one.
_PHONE_PATTERN = (
    r"(?<!\d)(?:(?:\+|00)\d{{1,3}}{sep}|86{sep}|\d{{1,3}})?"
    r"(?P<number>1{sep}[3-9](?:{sep}\d){{9}})(?!\d)"
)
# In free text, up to three separators between digits ("138 - 1234 - 5678").
_PHONE_RE = re.compile(_PHONE_PATTERN.format(sep=r"[\W_]{0,3}"))
# In an identifier (a request id), any number of them: the id is written to the logs
# as it is, and one wrongly taken for a phone only costs the caller its own id.
_PHONE_IN_ID_RE = re.compile(_PHONE_PATTERN.format(sep=r"[\W_]*"))
_SECRET_KEY_RE = re.compile("token|secret|authorization|password|phone_key|session_key",
                            re.IGNORECASE)
_PLAIN, _PHONE, _SECRET = 0, 1, 2


def mask_phone(phone: str) -> str:
    """138****5678: keeps the carrier prefix and the last four digits."""
    digits = re.sub(r"\D", "", phone)[-11:]
    if len(digits) < 7:
        return "****"
    return f"{digits[:3]}****{digits[-4:]}"


def looks_like_phone(text: str) -> bool:
    """Whether an identifier holds a mobile number, however it is split."""
    return _PHONE_IN_ID_RE.search(text) is not None


def scrub_text(text: str) -> str:
    """Mask anything that looks like a mainland mobile number inside free text."""
    return _PHONE_RE.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    return mask_phone(match["number"])


@lru_cache(maxsize=4096)
def _key_policy(key: str) -> int:
    # Cached: the same few keys come back on every log line (this runs per RPC).
    if _SECRET_KEY_RE.search(key):
        return _SECRET
    return _PHONE if "phone" in key.lower() else _PLAIN


def redact_value(key: str, value: object) -> object:
    """What a log line may show for `key=value` (nested dicts and lists included)."""
    policy = _key_policy(key)
    if policy == _SECRET:
        return "[redacted]"
    if isinstance(value, str):
        return mask_phone(value) if policy == _PHONE else scrub_text(value)
    if value is None or isinstance(value, (float, bool)):
        return value
    if isinstance(value, int):  # a phone number held as a number is still one
        text = str(value)
        return mask_phone(text) if policy == _PHONE or _PHONE_RE.fullmatch(text) else value
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
