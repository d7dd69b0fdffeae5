"""The event envelope (pond.events.v1.Event) and its stream entries: one stream per
producer ("pond.events.<producer>"); each entry holds the serialized envelope ("e")
and its type ("t", so that a consumer group can pass over the types it does not want
without parsing the envelope; entries added before the field existed have only "e").
"""

from __future__ import annotations

from datetime import datetime

import redis.asyncio as aioredis
from google.protobuf import message
from pond.events.v1 import event_pb2
from redis.typing import EncodableT, FieldT

from services.runtime.clock import set_timestamp
from services.runtime.ids import random_hex
from services.runtime.logs import current_request_id

STREAM_PREFIX = "pond.events."
DEAD_SUFFIX = ".dead"
# A stream entry's fields: the serialized envelope, and its type beside it so that a
# group can pass over the types it does not want without parsing the envelope
# (entries added before the type field existed have only the envelope).
ENVELOPE_FIELD, TYPE_FIELD = b"e", b"t"
# Streams are trimmed approximately to this length; consumers keep up long before.
STREAM_MAXLEN = 1_000_000
_TYPE_URL_PREFIX = "type.googleapis.com/"
def stream_for(producer: str) -> str:
    return f"{STREAM_PREFIX}{producer}"


def make_event(
    producer: str,
    subject_id: str,
    payload: message.Message,
    occurred_at: datetime,
    request_id: str = "",
) -> event_pb2.Event:
    """The envelope; its request id is the one given, else the current call's (or
    the event being handled's) from the log context. The payload and the time are
    written into the envelope's own fields: a Timestamp and an Any built first would
    each be copied in again (with Any.Pack a Python-level call), a third of the cost."""
    type_ = payload.DESCRIPTOR.full_name
    event = event_pb2.Event(
        id=random_hex(16),
        type=type_,
        producer=producer,
        subject_id=subject_id,
        request_id=request_id or current_request_id(),
    )
    set_timestamp(event.occurred_at, occurred_at)
    packed = event.payload
    packed.type_url = _TYPE_URL_PREFIX + type_  # what Any.Pack writes
    packed.value = payload.SerializeToString()
    return event


def event_type(raw: bytes) -> bytes:
    """The type of a serialized envelope (what goes in the entry's type field); b""
    for one that cannot be read, whose entry then has no type field (so that every
    group reads it and dead-letters it)."""
    try:
        return event_pb2.Event.FromString(raw).type.encode()
    except message.DecodeError:
        return b""


async def publish(redis: aioredis.Redis, stream: str, events: list[bytes]) -> list[bytes]:
    """XADD serialized envelopes (with their types) in one round trip; returns the
    stream ids."""
    pipe = redis.pipeline(transaction=False)
    for raw in events:
        type_ = event_type(raw)
        fields: dict[FieldT, EncodableT] = {ENVELOPE_FIELD: raw}
        if type_:
            fields[TYPE_FIELD] = type_
        pipe.xadd(stream, fields, maxlen=STREAM_MAXLEN, approximate=True)
    return await pipe.execute()
