"""Time-ordered ids: 12 hex digits of milliseconds, 4 of a per-process sequence, 8
random. Ids made by one process sort in the order they were made (stable "newest
first" listings), and never collide in practice across processes.

Random bytes come from os.urandom a page at a time: a call per id is a syscall that
releases the GIL, handing the event loop to a store's or grpc's thread each time
(several per RecordOrder: its ids and its events' ids)."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0
_POOL_BYTES = 4096
_pool = b""
_taken = 0


def _forget_pool() -> None:
    global _pool, _taken
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_pool)  # a child never repeats its parent's


def _random(nbytes: int) -> bytes:
    """`nbytes` from the pool (the caller holds _lock)."""
    global _pool, _taken
    if _taken + nbytes > len(_pool):
        _pool, _taken = os.urandom(max(_POOL_BYTES, nbytes)), 0
    chunk = _pool[_taken : _taken + nbytes]
    _taken += nbytes
    return chunk


def random_hex(nbytes: int) -> str:
    """`nbytes` random bytes (os.urandom's, drawn from the pool) as hex."""
    with _lock:
        return _random(nbytes).hex()


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
        tail = _random(4)
    return f"{prefix}{ms:012x}{seq:04x}{tail.hex()}"
