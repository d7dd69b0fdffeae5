"""What the tagging service consumes and publishes.

Consumes the member stream ("pond.events.member"): registrations, orders paid and
refunded, tier and points changes feed each member's history, and merges
(MembersMerged) move a merged member's history and manual tags to the survivor; one
runtime event handler per payload type (services/tagging/members.py); each event is
applied once (the runtime's processed mark is committed with the change). Consumes
the community stream ("pond.events.community"): group joins and leaves, check-ins and
chain joins are the member's interactions (interactions_30d / _90d). Publishes TagsChanged
batches on "pond.events.tagging" through the outbox."""

from __future__ import annotations

import numpy as np
from pond.events.v1 import tagging_events_pb2 as tev

from services.runtime.eventbus import stream_for

PRODUCER = "tagging"
STREAM = stream_for(PRODUCER)
MEMBER_STREAM = stream_for("member")
COMMUNITY_STREAM = stream_for("community")
CONSUMER_GROUP = "tagging"  # the Redis group, and the consumer its processed marks name
CHANGES_PER_EVENT = 1000  # members per message, gained and lost each


def tags_changed_payloads(changes, ids: list[str], run_id: str = "") -> list[tev.TagsChanged]:
    """TagsChanged messages: per tag, at most CHANGES_PER_EVENT members each."""
    if not changes.tags:
        return []
    total = sum(len(g) + len(lo) for g, lo in changes.tags.values())
    if total > 10_000:
        # A run's millions of changes: one vectorised lookup per tag.
        names = np.asarray(ids, dtype=object)

        def member_ids(members) -> list[str]:
            return names[np.asarray(members.to_array(), dtype=np.int64)].tolist()
    else:
        # Real time (one member): plain lookups, no copy of the whole index.
        def member_ids(members) -> list[str]:
            return [ids[i] for i in members]

    out: list[tev.TagsChanged] = []
    for tag, (gained, lost) in sorted(changes.tags.items()):
        g, lo = member_ids(gained), member_ids(lost)
        for start in range(0, max(len(g), len(lo)), CHANGES_PER_EVENT):
            end = start + CHANGES_PER_EVENT
            out.append(
                tev.TagsChanged(
                    tag=tag,
                    gained_member_ids=g[start:end],
                    lost_member_ids=lo[start:end],
                    run_id=run_id,
                )
            )
    return out
