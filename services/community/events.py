"""What the community service publishes on "pond.events.community" (through its
outbox): joins, first joins, leaves, groups opened and archived, check-ins and chain
joins, changes and closings. It consumes the member stream for MembersMerged (a
merged member's groups move to the surviving member, merges.py)."""

from __future__ import annotations

from pond.events.v1 import community_events_pb2 as cev

from services.runtime.eventbus import stream_for

PRODUCER = "community"
STREAM = stream_for(PRODUCER)
MEMBER_STREAM = stream_for("member")

MemberJoinedGroup = cev.MemberJoinedGroup
MemberLeftGroup = cev.MemberLeftGroup
GroupOpened = cev.GroupOpened
GroupArchived = cev.GroupArchived
CheckedIn = cev.CheckedIn
ChainJoined = cev.ChainJoined
ChainEntryChanged = cev.ChainEntryChanged
ChainClosed = cev.ChainClosed
ChainOrderLine = cev.ChainOrderLine
ColumnPostDue = cev.ColumnPostDue
