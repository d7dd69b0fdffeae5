"""Members merged by the member service (MembersMerged on its stream: two records
were one person) move their groups here: each group the merged member is in becomes
the surviving member's (who keeps one seat where both were in, the group's count
dropping by one), the merged member's memberships are left with the reason, and the
counters the POS reads follow. Their entries in open chains move too (domain
`merge_entry`: the survivor can see, change and withdraw them; both entries in one
chain become one); check-in streaks combine (the survivor's days are both records'
days, today's check-in counts for the survivor). Applied once per event
(the runtime's processed mark is committed with these writes); a concurrent join
makes the runtime run it again on fresh reads."""

from __future__ import annotations

from datetime import date

from pond.events.v1 import member_events_pb2 as mev

from services.community.domain import chains as dch
from services.community.domain import checkin as dc
from services.community.domain import groups as dg
from services.community.membership import ACTIVE, LEFT
from services.community.store import (
    CHAIN_ENTRIES,
    CHAINS,
    CHECKINS,
    GROUPS,
    MEMBER_STATS,
    MEMBERSHIPS,
    STREAKS,
    membership_id,
)
from services.community.writes import Writes
from services.runtime.documents import UnitOfWork
from services.runtime.events import Received

MAX_GROUPS_PER_MEMBER = 1000  # far above any real member's; one unit of work
MAX_OPEN_ENTRIES_PER_MEMBER = 1000
MAX_CHECK_IN_DAYS = 3660  # ten years of daily check-ins: one read per record


class Merges:
    def __init__(self, writes: Writes) -> None:
        self.w = writes
        self.store = writes.store

    async def on_members_merged(self, event: Received[mev.MembersMerged],
                                uow: UnitOfWork) -> None:
        merged, surviving = event.payload.merged_id, event.payload.surviving_id
        if not merged or not surviving or merged == surviving:
            return
        now = self.w.now_micros()
        theirs = await self.store.find(MEMBERSHIPS.name, {"member_id": merged, "state": ACTIVE},
                                       limit=MAX_GROUPS_PER_MEMBER)
        moved = 0
        for m in theirs:
            uow.replace(MEMBERSHIPS.name, {**m, "state": LEFT, "leave_time": now,
                                           "reason": f"merged into {surviving}"})
            sid = membership_id(m["group_id"], surviving)
            kept = await self.store.get(MEMBERSHIPS.name, sid)
            if kept is not None and kept["state"] == ACTIVE:  # both were in: one seat left
                group = await self.store.get(GROUPS.name, m["group_id"])
                if group is not None:
                    uow.replace(GROUPS.name, dg.refresh_open(
                        {**group, "member_count": max(0, group["member_count"] - 1),
                         "update_time": now}))
                continue
            moved += 1
            seat = {**m, "_id": sid, "member_id": surviving, "leave_time": 0, "reason": "",
                    "removed_by": "", "join_count": (kept or {}).get("join_count", 0) + 1}
            if kept is None:
                seat.pop("_v", None)
                uow.insert(MEMBERSHIPS.name, seat)
            else:
                uow.replace(MEMBERSHIPS.name, {**seat, "_v": kept["_v"]})
        await self._counters(uow, merged, surviving, moved)
        await self._chain_entries(uow, merged, surviving, now)
        await self._streaks(uow, merged, surviving)

    async def _streaks(self, uow: UnitOfWork, merged: str, surviving: str) -> None:
        """The survivor's streak from both records' days; the merged record's last
        check-in is copied to the survivor when it has none that day, so checking in
        again that day returns it (once a day per person)."""
        theirs = await self.store.find(CHECKINS.name, {"member_id": merged},
                                       limit=MAX_CHECK_IN_DAYS)
        if not theirs:
            return
        ours = await self.store.find(CHECKINS.name, {"member_id": surviving},
                                     limit=MAX_CHECK_IN_DAYS)
        days = {date.fromisoformat(d["day"]) for d in theirs + ours}
        record = dc.streak_of_days(days)
        assert record is not None
        kept = await self.store.get(STREAKS.name, surviving)
        if kept is None:
            uow.insert(STREAKS.name, {"_id": surviving, **record})
        else:
            uow.replace(STREAKS.name, {**kept, **record})
        last = max(theirs, key=lambda d: d["day"])
        key = f"{surviving}:{last['day']}"
        if not any(d["_id"] == key for d in ours):
            copy = {k: v for k, v in last.items() if k != "_v"}
            if last["day"] == record["last_day"]:  # the person's latest: the merged counts
                copy |= {k: record[k] for k in ("streak", "best_streak", "total_days")}
            uow.insert(CHECKINS.name, {**copy, "_id": key, "member_id": surviving,
                                       "merged_from": merged})

    async def _chain_entries(self, uow: UnitOfWork, merged: str, surviving: str,
                             now: int) -> None:
        entries = await self.store.find(CHAIN_ENTRIES.name,
                                        {"member_id": merged, "state": dch.ACTIVE},
                                        limit=MAX_OPEN_ENTRIES_PER_MEMBER)
        for entry in entries:
            chain = await self.store.get(CHAINS.name, entry["chain_id"])
            if chain is None:
                continue
            kept = await self.store.get(CHAIN_ENTRIES.name,
                                        dch.entry_id(chain["_id"], surviving))
            moved = dch.merge_entry(chain, entry, kept, surviving, now)
            if not moved:
                continue
            gone, survivor = moved
            uow.replace(CHAIN_ENTRIES.name, gone)
            # A survivor document with a version replaces the one read; else it is new.
            (uow.replace if "_v" in survivor else uow.insert)(CHAIN_ENTRIES.name, survivor)
            # The chain's version moves with its entries, so a join or change racing
            # the merge on this chain goes again on fresh reads (as they guard on it).
            uow.replace(CHAINS.name, {**chain, "update_time": now})

    async def _counters(self, uow: UnitOfWork, merged: str, surviving: str, moved: int) -> None:
        gone = await self.store.get(MEMBER_STATS.name, merged)
        if gone is None:
            return
        uow.replace(MEMBER_STATS.name, {**gone, "active": 0})
        kept = await self.store.get(MEMBER_STATS.name, surviving)
        if kept is None:  # the merged member's first join stays the person's first
            uow.insert(MEMBER_STATS.name, {"_id": surviving, "active": moved,
                                           "first_group_id": gone["first_group_id"],
                                           "first_join_time": gone["first_join_time"]})
        else:
            uow.replace(MEMBER_STATS.name, {**kept, "active": kept["active"] + moved})
