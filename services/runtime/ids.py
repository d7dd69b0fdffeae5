"""Time-ordered ids: 12 hex digits of milliseconds, 4 of a per-process sequence, 8
random. Ids made by one process sort in the order they were made (stable "newest
first" listings), and never collide in practice across processes."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def new_id(prefix: str = "") -> str:
    global _last_ms, _seq
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            ms, _seq = _last_ms, _seq + 1
            if _seq > 0xFFFF:  # 65k ids in one millisecond: borrow the next one
                ms, _seq = ms + 1, 0
        else:
            _seq = 0
        _last_ms = ms
        seq = _seq
    return f"{prefix}{ms:012x}{seq:04x}{os.urandom(4).hex()}"
