"""What the tagging service consumes and publishes.

Consumes the member stream ("pond.events.member"): registrations, orders paid and
refunded, tier and points changes feed each member's history; each event is applied
once (its id is recorded with the change). Publishes TagsChanged batches on
"pond.events.tagging" through the outbox."""

from __future__ import annotations

from pond.events.v1 import tagging_events_pb2 as tev

from services.runtime.eventbus import stream_for

PRODUCER = "tagging"
STREAM = stream_for(PRODUCER)
MEMBER_STREAM = stream_for("member")
CONSUMER_GROUP = "tagging"
CHANGES_PER_EVENT = 1000


def tags_changed_payloads(changes, ids: list[str], run_id: str = "") -> list[tev.TagsChanged]:
    """TagsChanged messages of at most CHANGES_PER_EVENT changes each."""
    out: list[tev.TagsChanged] = []
    batch: list[tev.TagChange] = []
    for name, (gained, lost) in sorted(changes.tags.items()):
        for flag, members in ((True, gained), (False, lost)):
            for idx in members:
                batch.append(tev.TagChange(member_id=ids[idx], tag=name, gained=flag))
                if len(batch) == CHANGES_PER_EVENT:
                    out.append(tev.TagsChanged(changes=batch, run_id=run_id))
                    batch = []
    if batch:
        out.append(tev.TagsChanged(changes=batch, run_id=run_id))
    return out
