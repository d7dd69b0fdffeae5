"""The community service's collections, declared once for the runtime's document
store (SQLite embedded, MongoDB in production), and the queries its use cases share.

  groups         by group id; `open` (active and below capacity) kept on every write.
                 Routing reads a pool's open groups by the index (pool_id, open,
                 sequence) or (pool_id, open, member_count, sequence): never every group.
  memberships    "<group>:<member>", one per member and group, its state and the last
                 stint's times (history: left and removed ones stay).
  member_stats   by member id: groups the member is in now, first join (the POS's
                 point read, and whether a join is the member's first ever).
  rules          routing rules by id (last_sequence: the pool's overflow numbering).
  checkins       "<member>:<YYYY-MM-DD>"; streaks by member id.
  chains         by chain id; chain_entries "<chain>:<member>".
  columns        by column id: a column's content, recurrence, target, next_at.
  column_posts   "<column>:<group>:<occurrence>": one per group and occurrence.
  group_days     "<group>:<YYYY-MM-DD>": a group's daily counters (messages per member,
                 speakers, attributed check-ins, chain joins, orders).
  graduations    by graduation id: its parameters and state (running, done).
  graduation_results  "<graduation>:<member>": each member's move or skip.
  wecom_events   WeCom callbacks received, by a hash of the event's key (replays).
  wecom_pending  "<chat>:<WeCom id>": members (or chats) WeCom named that Pond does
                 not know yet, skipped.
Times are epoch microseconds."""

from __future__ import annotations

from typing import Any

from services.runtime.documents import Collection, DocumentStore, Index, Schema

GROUPS = Collection(
    "groups",
    (
        # With _id (the store's tie-break) the pool's next group is one index entry.
        Index(("pool_id", "open", "sequence", "_id")),
        Index(("pool_id", "open", "member_count", "sequence", "_id")),
        Index(("store_id",)),
        Index(("owner_guide_id",)),
        Index(("kind", "state")),  # a column's target: every active group of a kind
        Index(("wecom_chat_id",)),  # WeCom callbacks name groups by their chat id
    ),
    fields=("kind", "level", "city", "state"),
)
MEMBERSHIPS = Collection(
    "memberships",
    (Index(("group_id", "state")), Index(("member_id", "state")), Index(("member_id", "pool_id"))),
)
# Most members who scan a live code never joined a group: a filter of the counters'
# keys answers `get` without a read (Collection.key_filter).
MEMBER_STATS = Collection("member_stats", key_filter=True)
RULES = Collection("rules", (Index(("deleted", "priority")),))
CHECKINS = Collection("checkins", (Index(("member_id", "day")),))
# A member's first check-in finds no streak without a read (see MEMBER_STATS).
STREAKS = Collection("streaks", key_filter=True)
CHAINS = Collection("chains", (Index(("group_id", "state")),))
CHAIN_ENTRIES = Collection("chain_entries", (Index(("chain_id", "state", "position")),
                                              Index(("member_id", "state"))))
# Operations (columns, activity and health, WeCom callbacks, graduation):
COLUMNS = Collection("columns", (Index(("state",)),))
COLUMN_POSTS = Collection("column_posts", (Index(("column_id", "occurrence")),
                                           Index(("group_id", "occurrence"))))
GROUP_DAYS = Collection("group_days", (Index(("group_id", "day")),))
GRADUATIONS = Collection("graduations")
GRADUATION_RESULTS = Collection("graduation_results", (Index(("graduation_id",)),))
WECOM_EVENTS = Collection("wecom_events")
WECOM_PENDING = Collection("wecom_pending", (Index(("chat_id",)),))
SCHEMA = Schema(
    "community",
    (GROUPS, MEMBERSHIPS, MEMBER_STATS, RULES, CHECKINS, STREAKS, CHAINS, CHAIN_ENTRIES,
     COLUMNS, COLUMN_POSTS, GROUP_DAYS, GRADUATIONS, GRADUATION_RESULTS, WECOM_EVENTS,
     WECOM_PENDING),
)
Doc = dict[str, Any]


def membership_id(group_id: str, member_id: str) -> str:
    return f"{group_id}:{member_id}"


async def open_pool_groups(store: DocumentStore, pool_id: str, order: tuple[str, ...],
                           limit: int) -> list[Doc]:
    """The pool's next `limit` groups to fill, in `order` (an indexed read)."""
    return await store.find(GROUPS.name, {"pool_id": pool_id, "open": True}, order=order,
                            limit=limit)


async def open_groups_in_pool(store: DocumentStore, pool_id: str) -> int:
    return await store.count(GROUPS.name, {"pool_id": pool_id, "open": True})


async def active_entries(store: DocumentStore, chain_id: str) -> list[Doc]:
    """A chain's active entries in joining order (its order list)."""
    return await store.find(CHAIN_ENTRIES.name, {"chain_id": chain_id, "state": "active"},
                            order=("position",))
