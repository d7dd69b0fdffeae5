"""`python -m bench.instructions RecordOrder N`: N calls of one member RPC through the
servicer in this process (no gRPC, relay and jobs off; 100 members, 16 calls at a
time), for counting instructions, which other work on a shared machine does not
disturb the way it disturbs calls/s and CPU time:

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python -m bench.instructions RecordOrder 448   # and 64

(the difference of the two `I refs` totals over 384 is the instructions per call,
start-up taken out). Valkey runs as a child process, which valgrind does not follow.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


async def run(kind: str, calls: int) -> None:
    from bench import workload
    from services.member.api import MemberServicer
    from services.member.server import start_member_service
    from services.member.settings import MemberSettings
    from services.runtime.auth import Caller, Role, current_caller
    from services.runtime.redis_conn import EmbeddedValkey

    with tempfile.TemporaryDirectory(prefix="pond-instructions-") as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey").start()
        os.environ.update(
            POND_DATA_DIR=f"{tmp}/data", POND_MODE="embedded", POND_AUTH_SECRET="x" * 32,
            POND_PHONE_KEY=base64.b64encode(b"k" * 32).decode(), REDIS_URL=valkey.url,
            POND_LOG_LEVEL="warning", POND_OUTBOX_RELAY_ENABLED="false",
            POND_JOBS_ENABLED="false",
        )
        service = await start_member_service(MemberSettings(), port=0, metrics=False)
        try:
            servicer = MemberServicer(service.app)
            current_caller.set(Caller("bench", Role.OPERATOR))
            rng = random.Random(1)
            ids = [
                (await servicer.RegisterMember(workload.register_request(i, rng), None)).member.id
                for i in range(100)
            ]
            call: Callable[[Any, None], Awaitable[Any]] = getattr(servicer, kind)
            make: Callable[[], Any] = (
                workload.record_order_requests(ids, rng, "i")
                if kind == "RecordOrder"
                else workload.get_member_requests(ids, rng)
            )
            for _ in range(0, calls, 16):
                await asyncio.gather(*(call(make(), None) for _ in range(16)))
        finally:
            await service.stop(0)
            valkey.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("GetMember", "RecordOrder"):
        sys.exit("usage: python -m bench.instructions GetMember|RecordOrder CALLS")
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
