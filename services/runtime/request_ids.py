"""Request ids: the one rule for taking a caller's id (the gRPC interceptor's
`x-request-id` metadata, the gateway's `X-Request-Id` header) and for making one."""

from __future__ import annotations

import itertools
import os
import re

from services.runtime.redaction import looks_like_phone

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Ids a process makes: a random prefix per process and a counter, unique without a
# syscall per call (os.urandom is one, and releases the GIL to grpc's poller thread).
# The prefix is letters only (hex digits moved to g-p): passed on to another service,
# an id must never read as a phone number there (see looks_like_phone).
_PREFIX = os.urandom(6).hex().translate(str.maketrans("0123456789", "ghijklmnop")) + "-"
_numbers = itertools.count(1)


def accepted_request_id(request_id: str) -> bool:
    """A caller's request id goes into every log line unredacted: only a short id
    that holds no phone number, however it is split, is taken; anything else gets a
    fresh one."""
    return bool(REQUEST_ID_RE.fullmatch(request_id)) and not looks_like_phone(request_id)


def new_request_id() -> str:
    return f"{_PREFIX}{next(_numbers):x}"


def request_id_from(offered: str | None) -> str:
    """The caller's id when it is acceptable, a new one otherwise."""
    if offered and accepted_request_id(offered):
        return offered
    return new_request_id()
