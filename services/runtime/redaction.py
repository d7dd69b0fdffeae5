"""Masking for values that must never appear in clear in logs or responses."""

from __future__ import annotations

import re
from functools import lru_cache

# A mainland mobile number, optionally +86 / 86, with optional spaces or dashes.
_PHONE_RE = re.compile(r"(?<!\d)(?:\+?86[\s-]?)?(1\d{2})[\s-]?\d{4}[\s-]?(\d{4})(?!\d)")
_SECRET_KEY_RE = re.compile("token|secret|authorization|password|phone_key", re.IGNORECASE)
_PLAIN, _PHONE, _SECRET = 0, 1, 2


def mask_phone(phone: str) -> str:
    """138****5678: keeps the carrier prefix and the last four digits."""
    digits = re.sub(r"\D", "", phone)[-11:]
    if len(digits) < 7:
        return "****"
    return f"{digits[:3]}****{digits[-4:]}"


def looks_like_phone(text: str) -> bool:
    return _PHONE_RE.search(text) is not None


def scrub_text(text: str) -> str:
    """Mask anything that looks like a mainland mobile number inside free text."""
    return _PHONE_RE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


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
