"""Opaque page tokens and page-size rules shared by every List RPC."""

from __future__ import annotations

import base64
import json

from services.runtime.errors import Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int, violations: Violations, *, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0 or requested > maximum:
        violations.add("page_size", f"must be between 0 and {maximum}")
        return DEFAULT_PAGE_SIZE
    return requested or DEFAULT_PAGE_SIZE


def encode_token(cursor: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_token(token: str, violations: Violations) -> dict | None:
    if not token:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(cursor, dict):
            return cursor
    except ValueError:
        pass
    violations.add("page_token", "is not a token this service issued")
    return None
