"""What the example publishes ("pond.events.example": NoteAdded) and consumes (its
own stream, to show a consumer; a real service consumes another's)."""

from __future__ import annotations

from pond.example.v1 import notes_pb2

from services.runtime.eventbus import stream_for

PRODUCER = "example"
STREAM = stream_for(PRODUCER)
NoteAdded = notes_pb2.NoteAdded
