"""CPU seconds used by a process (Linux /proc; None elsewhere). CPU per call is
steadier than calls/s on a shared machine, so the report shows both."""

from __future__ import annotations

import os


def _ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


_TICKS = _ticks()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of `pid` (all its threads), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS
