"""Masking for values that must never appear in clear in logs or responses."""

from __future__ import annotations

import re

# A mainland mobile number, optionally +86 / 86, with optional spaces or dashes.
_PHONE_RE = re.compile(r"(?<!\d)(?:\+?86[\s-]?)?(1\d{2})[\s-]?\d{4}[\s-]?(\d{4})(?!\d)")
_SECRET_WORDS = ("token", "secret", "authorization", "password", "phone_key")


def mask_phone(phone: str) -> str:
    """138****5678: keeps the carrier prefix and the last four digits."""
    digits = re.sub(r"\D", "", phone)[-11:]
    if len(digits) < 7:
        return "****"
    return f"{digits[:3]}****{digits[-4:]}"


def scrub_text(text: str) -> str:
    """Mask anything that looks like a mainland mobile number inside free text."""
    return _PHONE_RE.sub(lambda m: f"{m.group(1)}****{m.group(2)}", text)


def redact_value(key: str, value: object) -> object:
    """What a log line may show for `key=value` (nested dicts and lists included)."""
    lowered = key.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return "[redacted]"
    if isinstance(value, str):
        return mask_phone(value) if "phone" in lowered else scrub_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value
