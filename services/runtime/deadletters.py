"""Dead letters: the events a consumer group gave up on (after POND_EVENT_MAX_DELIVERIES
tries, or unreadable), kept on "<stream>.dead" with the group, the error and the
source entry's id. Once the cause is fixed (a deploy, the missing data is there),
replay them:

    python -m services.runtime.deadletters list   --stream pond.events.member [--group tagging]
    python -m services.runtime.deadletters replay --stream pond.events.member --group tagging \
        [--id 1700000000000-0 ...] [--limit 1000]

(REDIS_URL as for the services; an operator's Redis user: it adds to a producer's
stream). Replay adds each envelope to the stream again, unchanged (same event id),
and deletes it from the dead-letter stream, in one transaction per event. Every
group reads the stream, so every group gets it again: the ones that applied it
already skip it (their processed mark, or the Redis done-marker), the one that gave
up applies it now. `--group` picks whose dead letters to replay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

import redis.asyncio as aioredis
from pond.events.v1 import event_pb2

from services.runtime.config import RuntimeSettings
from services.runtime.eventbus import DEAD_SUFFIX
from services.runtime.redis_conn import connect_redis


@dataclass(frozen=True)
class DeadLetter:
    id: str  # on the dead-letter stream
    source_id: str  # on the stream it came from
    group: str
    error: str
    event_id: str
    event_type: str


Fields = dict[bytes, bytes]
# redis-py types stream replies loosely: [(entry id, {field: value})].
Entries = list[tuple[bytes, Fields]]


def _text(fields: Fields, name: bytes) -> str:
    return fields.get(name, b"").decode(errors="replace")


def _letter(entry_id: bytes, fields: Fields) -> DeadLetter:
    event = event_pb2.Event()
    try:
        event.ParseFromString(fields.get(b"e", b""))
    except Exception:  # an unreadable envelope is a dead letter too
        event = event_pb2.Event()
    return DeadLetter(entry_id.decode(), _text(fields, b"source_id"), _text(fields, b"group"),
                      _text(fields, b"error"), event.id, event.type)


async def list_dead_letters(
    redis: aioredis.Redis, stream: str, *, group: str = "", count: int = 1000
) -> list[DeadLetter]:
    entries = cast(Entries, await redis.xrange(stream + DEAD_SUFFIX, count=count))
    letters = [_letter(entry_id, fields) for entry_id, fields in entries]
    return [d for d in letters if not group or d.group == group]


async def replay_dead_letters(
    redis: aioredis.Redis,
    stream: str,
    *,
    group: str = "",
    ids: Sequence[str] = (),
    limit: int = 1000,
) -> int:
    """Puts dead letters back on `stream` (see the module docstring); returns how
    many. Unreadable envelopes stay where they are."""
    dead = stream + DEAD_SUFFIX
    wanted = set(ids)
    replayed = 0
    for entry_id, fields in cast(Entries, await redis.xrange(dead, count=limit)):
        letter = _letter(entry_id, fields)
        if (group and letter.group != group) or (wanted and letter.id not in wanted):
            continue
        if not letter.event_id:
            continue
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(stream, {b"e": fields[b"e"]})
        pipe.xdel(dead, entry_id)
        await pipe.execute()
        replayed += 1
    return replayed


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.runtime.deadletters")
    parser.add_argument("command", choices=("list", "replay"))
    parser.add_argument("--stream", required=True, help="e.g. pond.events.member")
    parser.add_argument("--group", default="", help="only this consumer group's")
    parser.add_argument("--id", action="append", default=[], help="only these dead letters")
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args(argv)
    url = RuntimeSettings().redis_url
    if not url:
        sys.stderr.write("set REDIS_URL (the Redis the services use)\n")
        return 2
    redis = connect_redis(url)
    try:
        if args.command == "list":
            for letter in await list_dead_letters(redis, args.stream, group=args.group,
                                                  count=args.limit):
                if not args.id or letter.id in args.id:
                    sys.stdout.write(json.dumps(asdict(letter), ensure_ascii=False) + "\n")
        else:
            count = await replay_dead_letters(redis, args.stream, group=args.group,
                                              ids=args.id, limit=args.limit)
            sys.stdout.write(json.dumps({"replayed": count}) + "\n")
    finally:
        await redis.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
