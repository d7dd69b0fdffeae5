"""`python -m bench.community_events [route|check] [EVENTS]`: the CPU the community
service's event consumers spend per event, as the host runs them (the consumers it
declares, merged into its groups; SQLite; an embedded Valkey).

The service runs in this process; another process adds EVENTS events to
`pond.events.community` at about 2,000 a second in batches of 10, as the service's
relay would (with the type field): RouteMember's two events (`route`: no handler of
the service wants them) or CheckIn's `CheckedIn` without a group (`check`). Printed:
this process's CPU from the first event until every group has acked the last, less
its idle CPU, per event; and the reads and acks per event. Not part of `make bench`
(no baseline): a what-if bench for the event path (README, Performance)."""

from __future__ import annotations

import asyncio
import pickle
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from services.community import events as cev
from services.community.server import start_community_service
from services.community.settings import CommunitySettings
from services.runtime.eventbus import make_event
from services.runtime.redis_conn import EmbeddedValkey, connect_redis

# The publisher: (type, envelope) pairs from a pickle, 10 per pipeline every 5 ms.
PUBLISHER = r"""
import pickle, sys, time
import redis
client = redis.Redis.from_url(sys.argv[1])
stream, events = sys.argv[2], pickle.load(open(sys.argv[3], "rb"))
for start in range(0, len(events), 10):
    pipe = client.pipeline(transaction=False)
    for type_, raw in events[start:start + 10]:
        pipe.xadd(stream, {b"e": raw, b"t": type_})
    pipe.execute()
    time.sleep(0.005)
"""


def envelopes(shape: str, count: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC)
    payloads = ([cev.MemberFirstJoinedGroup(member_id="m", group_id="g"),
                 cev.MemberJoinedGroup(member_id="m", group_id="g")] if shape == "route"
                else [cev.CheckedIn(member_id="m", day="2026-11-30")])
    out = []
    for i in range(count):
        payload = payloads[i % len(payloads)]
        out.append((payload.DESCRIPTOR.full_name.encode(),
                    make_event("community", f"m{i}", payload, now).SerializeToString()))
    return out


async def measure(shape: str, count: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        valkey = EmbeddedValkey(data / "valkey", password=secrets.token_urlsafe(16)).start()
        try:
            service = await start_community_service(CommunitySettings(
                data_dir=data, auth_secret=secrets.token_urlsafe(32), mode="test",
                redis_url=valkey.url, log_level="warning",
                community_member_target="127.0.0.1:9", community_tagging_target="127.0.0.1:8",
            ), port=0, metrics=False)
            redis = connect_redis(valkey.url)
            try:
                (data / "events").write_bytes(pickle.dumps(envelopes(shape, count)))
                await asyncio.sleep(0.5)
                idle_from = time.process_time()
                await asyncio.sleep(2)
                idle = (time.process_time() - idle_from) / 2
                await redis.config_resetstat()
                cpu, wall = time.process_time(), time.perf_counter()
                publisher = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", PUBLISHER, valkey.url, cev.STREAM,
                    str(data / "events"))
                while True:
                    await asyncio.sleep(0.05)
                    groups = await redis.xinfo_groups(cev.STREAM)
                    if publisher.returncode is not None and all(
                            g["entries-read"] >= count and g["pending"] == 0 for g in groups):
                        break
                wall = time.perf_counter() - wall
                cpu = time.process_time() - cpu - idle * wall
                stats = await redis.info("commandstats")
            finally:
                await redis.aclose()
                await service.stop(0)
        finally:
            valkey.stop()

    def per_event(command: str) -> float:
        return float(stats.get(f"cmdstat_{command}", {}).get("calls", 0)) / count

    return (f"{shape}: {cpu / count * 1e6:.1f} µs CPU per event ({count:,} events in"
            f" {wall:.1f} s; groups {[g['name'].decode() for g in groups]};"
            f" XREADGROUP {per_event('xreadgroup'):.3f}, XACK {per_event('xack'):.3f} per event)")


def main(argv: list[str]) -> None:
    shapes = [argv[0]] if argv else ["route", "check"]
    count = int(argv[1]) if len(argv) > 1 else 10_000
    for shape in shapes:
        print(asyncio.run(measure(shape, count)))


if __name__ == "__main__":
    main(sys.argv[1:])
