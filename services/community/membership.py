"""Membership: joining (entry rules checked, capacity never exceeded), leaving and
removal, with each member's history kept; the POS's "is this member in any group";
every join and leave announced, a member's first ever join marked as such
(MemberJoinedGroup.first_join).

Capacity: a join writes the group's member count, guarded by the version it read,
with the membership, the member's stats and the events in one unit of work. Joins
into one group take turns in the process (no conflicts among themselves); across
replicas the guard decides and the loser reloads (a full group then refuses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.community.domain import groups as dg
from services.community.domain.errors import RuleViolation
from services.community.events import MemberJoinedGroup, MemberLeftGroup
from services.community.peers import MemberLookup, Peers
from services.community.store import GROUPS, MEMBER_STATS, MEMBERSHIPS, membership_id
from services.community.writes import Writes
from services.runtime.documents import Doc, UnitOfWork

ACTIVE, LEFT, REMOVED = "active", "left", "removed"


@dataclass
class Joined:
    group: Doc
    membership: Doc
    already_member: bool = False
    first_join: bool = False


def write_group(uow: UnitOfWork, group: Doc) -> None:
    """The group as joins left it: replaced (guarded by the version it was read at),
    or inserted when it was opened in this unit of work."""
    if group.get("_v"):
        uow.replace(GROUPS.name, group)
    else:
        uow.insert(GROUPS.name, group)


class Membership:
    def __init__(self, writes: Writes, peers: Peers) -> None:
        self.w = writes
        self.store = writes.store
        self.peers = peers

    # -- entry rules --
    async def entry_facts(self, rules: Doc, lookup: MemberLookup,
                          payment_id: str = "") -> dg.EntryFacts:
        """What the rules need to know of the member, asked of the other services."""
        tier = bought = in_segment = None
        if rules.get("min_tier_level"):
            tier = await lookup.tier_level()
        if rules.get("must_have_bought"):
            bought = await lookup.has_bought()
        if rules.get("segment_id"):
            in_segment = (await lookup.segments([rules["segment_id"]]))[rules["segment_id"]]
        return dg.EntryFacts(tier, bought, in_segment, payment_id)

    # -- joining --
    async def join(self, group_id: str, member_id: str, payment_id: str = "") -> Joined:
        group = await self.w.need(GROUPS.name, "group", group_id)
        current = await self.store.get(MEMBERSHIPS.name, membership_id(group_id, member_id))
        if current is not None and current["state"] == ACTIVE:
            return Joined(group, current, already_member=True)
        facts = await self.entry_facts(group["entry_rules"], self.peers.lookup(member_id),
                                       payment_id)

        async def attempt() -> Joined:
            group = await self.w.need(GROUPS.name, "group", group_id)
            uow = UnitOfWork()
            joined = await self.add_member(uow, group, member_id,
                                           await self.member_stats(member_id), facts)
            if not joined.already_member:
                await self.store.commit(uow)
            return joined

        return await self.w.run(("group", group_id), attempt)

    async def member_stats(self, member_id: str) -> Doc | None:
        """The member's counters; None for a member who never joined a group, who then
        has no membership anywhere (the first join writes both in one unit of work,
        and a merge moves memberships only with counters), so callers skip reading one.
        A member who never had any is answered without a read (the key filter)."""
        return await self.store.get(MEMBER_STATS.name, member_id)

    async def add_member(self, uow: UnitOfWork, group: Doc, member_id: str,
                         stats: Doc | None, facts: dg.EntryFacts,
                         rule_id: str = "") -> Joined:
        """Adds the join of `member_id` to `group` to `uow` (the group's count, the
        membership, the member's stats, the events); RuleViolation when the group is
        archived or full or the member fails its entry rules. Nothing added when the
        member is in the group already. `stats`: the member's counters (member_stats)
        as read in this attempt."""
        current = await self.joinable(group, member_id, stats, facts)
        if current is not None and current["state"] == ACTIVE:
            return Joined(group, current, already_member=True)
        joined = self.admit(uow, group, member_id, stats, current, rule_id)
        write_group(uow, joined.group)
        return joined

    async def joinable(self, group: Doc, member_id: str, stats: Doc | None,
                       facts: dg.EntryFacts) -> Doc | None:
        """The member's membership of the group, active or past (None: never in it; not
        read for a member without counters, who was never in any group). An active one
        is returned as it is; otherwise RuleViolation unless the group takes the member
        now (active, with room, its entry rules met)."""
        current = None if stats is None else await self.store.get(
            MEMBERSHIPS.name, membership_id(group["_id"], member_id))
        if current is not None and current["state"] == ACTIVE:
            return current
        dg.ensure_joinable(group)
        dg.check_entry(group["entry_rules"], facts)
        return current

    def admit(self, uow: UnitOfWork, group: Doc, member_id: str, stats: Doc | None,
              current: Doc | None, rule_id: str) -> Joined:
        """The join's membership, the member's counters and its event added to `uow`,
        once the group has taken the member (joinable). The group
        with its new count is the Joined's, not written: a batch of joins into one
        group writes it once (write_group)."""
        now, micros = self.w.now(), self.w.now_micros()
        group = dg.refresh_open({**group, "member_count": group["member_count"] + 1,
                                 "update_time": micros})
        membership = {
            **(current or {}), "_id": membership_id(group["_id"], member_id),
            "group_id": group["_id"], "member_id": member_id,
            "pool_id": group["pool_id"], "rule_id": rule_id, "state": ACTIVE,
            "join_time": micros, "leave_time": 0, "removed_by": "", "reason": "",
            "join_count": (current or {}).get("join_count", 0) + 1,
        }
        (uow.replace if current else uow.insert)(MEMBERSHIPS.name, membership)
        first = stats is None
        if stats is None:
            uow.insert(MEMBER_STATS.name, {"_id": member_id, "active": 1,
                                           "first_group_id": group["_id"],
                                           "first_join_time": micros})
        else:
            uow.replace(MEMBER_STATS.name, {**stats, "active": stats["active"] + 1})
        self.w.emit(uow, member_id, MemberJoinedGroup(
            group_id=group["_id"], member_id=member_id, group_kind=group["kind"],
            group_level=group["level"], store_id=group["store_id"], rule_id=rule_id,
            first_join=first), now)
        return Joined(group, membership, first_join=first)

    # -- leaving --
    async def leave(self, group_id: str, member_id: str, *, removed_by: str = "",
                    reason: str = "") -> Doc:
        async def attempt() -> Doc:
            group = await self.w.need(GROUPS.name, "group", group_id)
            current = await self.store.get(MEMBERSHIPS.name, membership_id(group_id, member_id))
            if current is None or current["state"] != ACTIVE:
                raise RuleViolation("NOT_IN_GROUP", f"member {member_id!r} is not in the group",
                                    group_id=group_id)
            now, micros = self.w.now(), self.w.now_micros()
            uow = UnitOfWork()
            uow.replace(GROUPS.name, dg.refresh_open(
                {**group, "member_count": group["member_count"] - 1, "update_time": micros}))
            left = {**current, "state": REMOVED if removed_by else LEFT, "leave_time": micros,
                    "removed_by": removed_by, "reason": reason}
            uow.replace(MEMBERSHIPS.name, left)
            stats = await self.store.get(MEMBER_STATS.name, member_id)
            if stats is not None:
                uow.replace(MEMBER_STATS.name, {**stats, "active": max(0, stats["active"] - 1)})
            self.w.emit(uow, member_id, MemberLeftGroup(
                group_id=group_id, member_id=member_id, removed=bool(removed_by),
                removed_by=removed_by), now)
            await self.store.commit(uow)
            return left

        return await self.w.run(("group", group_id), attempt)

    # -- reading --
    async def group_members(self, group_id: str, include_past: bool, after: str,
                            limit: int) -> list[Doc]:
        await self.w.need(GROUPS.name, "group", group_id)
        where: dict[str, Any] = {"group_id": group_id}
        return await self._page(where, include_past, after, limit)

    async def member_groups(self, member_id: str, include_past: bool, after: str,
                            limit: int) -> list[Doc]:
        return await self._page({"member_id": member_id}, include_past, after, limit)

    async def _page(self, where: dict[str, Any], include_past: bool, after: str,
                    limit: int) -> list[Doc]:
        if not include_past:
            where["state"] = ACTIVE
        if after:
            where["_id"] = {"$gt": after}
        return await self.store.find(MEMBERSHIPS.name, where, limit=limit)

    async def in_any_group(self, member_id: str) -> tuple[int, bool]:
        """(groups the member is in now, whether they ever joined one): one read."""
        stats = await self.store.get(MEMBER_STATS.name, member_id)
        return (int(stats["active"]), True) if stats else (0, False)
