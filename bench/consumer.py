"""`python -m bench.consumer [EVENTS] [PER_ROUND]`: the CPU an in-process event
consumer spends per event (the runtime's EventConsumer over an embedded Valkey, a
handler that does nothing), with PER_ROUND events read per round. Measures the
consumer's own Redis work: the read, the done-key check, the done keys and the ack.
Not part of `make bench` (no baseline): a what-if bench for the event bus."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import empty_pb2
from pond.events.v1 import event_pb2

from services.runtime.eventbus import EventConsumer, make_event
from services.runtime.redis_conn import EmbeddedValkey, connect_redis


async def measure(events: int, per_round: int) -> tuple[float, float]:
    """(µs of CPU, µs of wall time) per event."""
    with tempfile.TemporaryDirectory() as data:
        valkey = EmbeddedValkey(Path(data), password="bench").start()
        try:
            redis = connect_redis(valkey.url)
            stream = "pond.events.bench"
            pipe = redis.pipeline(transaction=False)
            for i in range(events):
                ev = make_event("bench", f"s{i}", empty_pb2.Empty(), datetime.now(UTC))
                pipe.xadd(stream, {b"e": ev.SerializeToString()})
            await pipe.execute()
            handled = 0

            async def handler(_event: event_pb2.Event) -> None:
                nonlocal handled
                handled += 1

            consumer = EventConsumer(redis, stream, "g", "c1", handler, batch=per_round)
            await consumer.ensure_group()
            wall, cpu = time.perf_counter(), time.process_time()
            while handled < events:
                await consumer.poll(block_ms=1)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            await redis.aclose()
        finally:
            valkey.stop()
    return cpu / events * 1e6, wall / events * 1e6


def main(argv: list[str]) -> None:
    events = int(argv[0]) if argv else 10_000
    for per_round in [int(argv[1])] if len(argv) > 1 else [1, 8]:
        cpu, wall = asyncio.run(measure(events, per_round))
        print(
            f"{events:,} events, {per_round} a round:"
            f" {cpu:.1f} µs CPU, {wall:.1f} µs wall per event"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
