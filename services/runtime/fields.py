"""Checks of request fields that every service makes the same way: ids and
timestamps. Each adds field violations (never raises), so one call reports every
problem, and returns the value the use cases may rely on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.message import Message

from services.runtime.clock import from_epoch_micros
from services.runtime.errors import Violations

# Every id a service makes is far shorter; a longer one is refused before any lookup
# (and before an error could echo it).
MAX_ID_CHARS = 128
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def check_id(v: Violations, path: str, value: str, *, required: bool = False) -> bool:
    """An id (or a key such as a tag name): given when required, at most
    MAX_ID_CHARS long. True when it passed."""
    if not value:
        return v.check(not required, path, "is required")
    return v.check(len(value) <= MAX_ID_CHARS, path, f"must be at most {MAX_ID_CHARS} characters")


def check_ids(v: Violations, path: str, values: Sequence[str]) -> None:
    """A repeated id field: each id given and not too long (the first bad one is
    reported)."""
    if not ids_fit(values):
        for i, value in enumerate(values):
            if not check_id(v, f"{path}[{i}]", value, required=True):
                return


def ids_fit(values: Sequence[str]) -> bool:
    """Whether every id is given and not too long: a cheap test (C loops, nothing
    kept) for hot RPCs that take lists of ids, such as CheckMembership."""
    return not values or (all(values) and max(map(len, values)) <= MAX_ID_CHARS)


def timestamp(
    v: Violations, message: Message, name: str, *, path: str = "", required: bool = False
) -> datetime | None:
    """The UTC datetime the Timestamp field `name` of `message` holds; None when it
    is unset or outside what a Timestamp may hold (a violation at `path`, by default
    the field's name)."""
    path = path or name
    if not message.HasField(name):
        v.check(not required, path, "is required")
        return None
    ts = getattr(message, name)
    if not MIN_TIMESTAMP_SECONDS <= ts.seconds <= MAX_TIMESTAMP_SECONDS:
        v.add(path, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
        return None
    if not 0 <= ts.nanos <= 999_999_999:
        v.add(f"{path}.nanos", "must be between 0 and 999999999")
        return None
    return from_epoch_micros(ts.seconds * 1_000_000 + ts.nanos // 1000)
