"""Time-ordered ids: 12 hex digits of milliseconds then 12 random, so ids sort by
creation time (stable page order) and never collide in practice."""

from __future__ import annotations

import os
import time


def new_id(prefix: str = "") -> str:
    return f"{prefix}{int(time.time() * 1000):012x}{os.urandom(6).hex()}"
