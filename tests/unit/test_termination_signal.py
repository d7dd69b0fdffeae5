"""A SIGTERM that arrives while a process is still starting (the dev stack starts
four servers after the member service answers) is kept and acted on once start-up is
over, instead of killing the process with the default action (exit -15, nothing
stopped in order): tests/e2e/test_stack_journey.py stops the stack as soon as the
member service serves, and failed now and then on a busy machine."""

from __future__ import annotations

import asyncio
import os
import signal

from services.runtime.server import termination_requested


async def test_a_signal_during_start_up_is_kept_for_after_it():
    loop = asyncio.get_running_loop()
    terminated = termination_requested()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # "during start-up": nothing awaits it yet
        await asyncio.wait_for(terminated.wait(), 5)
        assert terminated.is_set()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
