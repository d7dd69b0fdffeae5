"""Paging for every List RPC, written once: bounded page sizes, fetch one more item
than the page holds to know whether another page follows, and opaque page tokens.

A page token is the cursor where the next page starts (a small JSON object, e.g.
`{"a": "<last id>"}`), signed (HMAC-SHA256, the service's page key, see
RuntimeSettings.page_key) and bound to the request it continues (AIP-158): the List
method and every field of the request but `page_size` and `page_token`. So a token
is refused, as an INVALID_ARGUMENT `page_token` violation, when it was tampered with
or made up, issued by another service or deployment, or used with another filter
or another method; and each caller still declares its cursor's shape (`{"a": str}`)
and a token must hold exactly that.

    page = paging.begin(request, v, {"a": str})
    v.raise_if_any()
    items = await store.list(flt, after=page.get("a", ""), limit=page.fetch)
    items, next_token = page.finish(items, lambda item: {"a": item.id})

The key reaches the handler through a context variable that the interceptor sets on
every call (`use_key`), so servicers need no wiring for it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from services.runtime.errors import Violations

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Issued tokens hold one id or number (ids are at most 128 characters): far below this.
MAX_TOKEN_CHARS = 1024
_TAG_BYTES = 16
_INT64 = range(-(2**63), 2**63)
_NOT_ISSUED = "is not a token this service issued"
_OTHER_REQUEST = (
    "was issued for another request: keep every field but page_size as it was on the"
    " first page (or start again without a page_token)"
)

T = TypeVar("T")
CursorShape = Mapping[str, type[str] | type[int]]
Cursor = dict[str, Any]

page_key: ContextVar[bytes | None] = ContextVar("pond_page_key", default=None)


def use_key(key: bytes) -> None:
    """Sets the current call's page key (the interceptor does, for its service)."""
    page_key.set(key)


def page_size(requested: int, violations: Violations, *, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0 or requested > maximum:
        violations.add("page_size", f"must be between 0 and {maximum}")
        return DEFAULT_PAGE_SIZE
    return requested or DEFAULT_PAGE_SIZE


@dataclass(frozen=True)
class Page:
    """One page of a List call: its size, the cursor it starts after (None: the first
    page), and what makes the next page's token."""

    size: int
    cursor: Cursor | None
    _binding: str
    _key: bytes

    @property
    def fetch(self) -> int:
        """How many items to fetch: one more than the page, to know if more follow."""
        return self.size + 1

    def get(self, name: str, default: Any) -> Any:
        return default if self.cursor is None else self.cursor.get(name, default)

    def finish(self, items: Sequence[T], cursor_of: Callable[[T], Cursor]) -> tuple[list[T], str]:
        """The page's items (at most `size` of `items`, fetched with `fetch`) and the
        token of the next page ("" when this is the last)."""
        if len(items) <= self.size:
            return list(items), ""
        return list(items[: self.size]), self._token(cursor_of(items[self.size - 1]))

    def _token(self, cursor: Cursor) -> str:
        payload = json.dumps({"c": cursor, "f": self._binding}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(_tag(self._key, payload))}"


def begin(
    request: Message,
    violations: Violations,
    shape: CursorShape,
    *,
    maximum: int = MAX_PAGE_SIZE,
) -> Page:
    """The page `request` (with `page_size` and `page_token`) asks for; a bad size
    or token is a violation (and the first page is assumed)."""
    key = page_key.get()
    if key is None:
        raise RuntimeError("no page key: List methods are served through the runtime's server")
    size = page_size(getattr(request, "page_size", 0), violations, maximum=maximum)
    binding = _binding(request)
    token: str = getattr(request, "page_token", "")
    cursor = _cursor(token, key, binding, shape, violations) if token else None
    return Page(size, cursor, binding, key)


def _binding(request: Message) -> str:
    """What a token is bound to: the method (by its request type) and the filter
    (every other field), as a short digest."""
    rest = type(request)()
    rest.CopyFrom(request)
    for name in ("page_token", "page_size"):
        if name in rest.DESCRIPTOR.fields_by_name:
            rest.ClearField(name)
    digest = hashlib.sha256(rest.DESCRIPTOR.full_name.encode() + b"\0")
    digest.update(rest.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def _cursor(
    token: str, key: bytes, binding: str, shape: CursorShape, violations: Violations
) -> Cursor | None:
    payload = _verified(token, key)
    body = _json(payload) if payload is not None else None
    if body is None or body.keys() != {"c", "f"}:
        violations.add("page_token", _NOT_ISSUED)
        return None
    if body["f"] != binding:
        violations.add("page_token", _OTHER_REQUEST)
        return None
    cursor = body["c"]
    if isinstance(cursor, dict) and cursor.keys() == shape.keys():
        if all(_fits(cursor[name], kind) for name, kind in shape.items()):
            return cursor
    violations.add("page_token", _NOT_ISSUED)
    return None


def _verified(token: str, key: bytes) -> bytes | None:
    """The payload of a token signed with `key`; None for anything else."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    payload_b64, tag_b64 = token.split(".")
    try:
        payload, tag = _unb64(payload_b64), _unb64(tag_b64)
    except (binascii.Error, ValueError):
        return None
    # Only the one spelling we issue: base64's last character carries unused bits, so
    # other spellings decode to the same bytes and a token would have several forms.
    if _b64(tag) != tag_b64 or _b64(payload) != payload_b64:
        return None
    return payload if hmac.compare_digest(tag, _tag(key, payload)) else None


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # signed by us, so only a bug gets here
        return None
    return body if isinstance(body, dict) else None


def _fits(value: object, kind: type) -> bool:
    if kind is int:  # what the stores can hold (and not a bool, which is an int too)
        return type(value) is int and value in _INT64
    return type(value) is kind


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
