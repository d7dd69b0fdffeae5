"""The event loop every Pond process runs on: uvloop (libuv's loop, written in
Cython) by default, asyncio's own with POND_EVENT_LOOP=asyncio.

A service spends much of each call in the loop's own machinery (tasks, futures,
callbacks, the hand-offs from gRPC's poller and the SQLite writer's thread); uvloop
does that work in C. The benchmarks' echo baseline runs on the same loop as the
service it is compared with, so their ratios measure Pond's work, not the loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOPS = ("uvloop", "asyncio")


def loop_name() -> str:
    name = os.environ.get("POND_EVENT_LOOP", "uvloop") or "uvloop"
    if name not in LOOPS:
        raise SystemExit(f"POND_EVENT_LOOP is one of {', '.join(LOOPS)}, not {name!r}")
    return name


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the configured kind (for runners that make their own, like
    pytest-asyncio's)."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the configured loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
