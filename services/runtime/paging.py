"""Opaque page tokens and page-size rules shared by every List RPC.

A token is the cursor of the page it continues (a small JSON object, base64). Each
caller declares the shape of its cursor (`{"a": str}`): a token that does not decode
to exactly that shape is not one the service issued, whatever it decodes to, and is
refused as a `page_token` violation before anything uses it."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from services.runtime.errors import Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Issued tokens hold one id or number (ids are at most 128 characters): far below this.
MAX_TOKEN_CHARS = 1024
_INT64 = range(-(2**63), 2**63)

CursorShape = Mapping[str, type[str] | type[int]]


def page_size(requested: int, violations: Violations, *, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0 or requested > maximum:
        violations.add("page_size", f"must be between 0 and {maximum}")
        return DEFAULT_PAGE_SIZE
    return requested or DEFAULT_PAGE_SIZE


def encode_token(cursor: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_token(token: str, violations: Violations, shape: CursorShape) -> dict | None:
    """The cursor `token` holds (None for the first page), with exactly the keys of
    `shape`, each of its type; anything else is a violation."""
    if not token:
        return None
    cursor = _decoded(token)
    if cursor is not None and cursor.keys() == shape.keys():
        if all(_fits(cursor[key], kind) for key, kind in shape.items()):
            return cursor
    violations.add("page_token", "is not a token this service issued")
    return None


def _decoded(token: str) -> dict | None:
    if len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, RecursionError):  # not base64, not UTF-8, not JSON, too deep
        return None
    return cursor if isinstance(cursor, dict) else None


def _fits(value: object, kind: type) -> bool:
    if kind is int:  # what the stores can hold (and not a bool, which is an int too)
        return type(value) is int and value in _INT64
    return type(value) is kind
