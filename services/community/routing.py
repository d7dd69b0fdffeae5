"""Live-code routing (活码): routing rules and RouteMember.

A rule is chosen (the live code's, or the first enabled rule by priority whose match
fits the member and the context), then its pool gives the group: the first open
group by the rule's fill order, one indexed read however many groups the brand has.
When no group of the pool has room, a group is opened from the rule's template (the
pool's next sequence number, committed with the rule's last_sequence, so two routers
never open the same number twice) and announced (GroupOpened); without a template the
pool is full (POOL_FULL). The chosen group's entry rules are checked and the member
joins, in one unit of work with the group's count.

Routes into one pool take turns in the process, so 1,000 concurrent joins never
conflict among themselves and open exactly the groups they fill; across replicas the
guards (the group's version, the rule's version, the overflow group's id) decide and
the loser routes again."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.community.domain import routing as dr
from services.community.domain.errors import RuleViolation
from services.community.events import GroupOpened
from services.community.membership import ACTIVE, Joined, Membership
from services.community.peers import MemberLookup
from services.community.store import (
    GROUPS,
    MEMBERSHIPS,
    RULES,
    open_groups_in_pool,
    open_pool_group,
)
from services.community.writes import DOMAIN, Writes
from services.runtime.documents import Doc, DuplicateKey, UnitOfWork
from services.runtime.errors import already_exists, failed_precondition, not_found
from services.runtime.ids import new_id

MAX_RULES = 1000  # rules a brand may have: routing by context reads them in order
# How long a scan may use a rule read by an earlier scan. A change made on this
# replica applies at once (it drops the kept rule); one made on another, within this.
RULE_KEPT_SECONDS = 1.0


@dataclass
class Routed:
    joined: Joined
    rule_id: str
    opened_group: bool = False


class Routing:
    def __init__(self, writes: Writes, membership: Membership) -> None:
        self.w = writes
        self.store = writes.store
        self.membership = membership
        self._kept: dict[str, tuple[float, Doc]] = {}  # rule id -> (read at, rule)

    # -- rules --
    async def create_rule(self, rule_id: str, fields: Mapping[str, Any]) -> Doc:
        count = await self.store.count(RULES.name, {"deleted": False})
        if count >= MAX_RULES:
            raise failed_precondition("TOO_MANY_RULES", f"at most {MAX_RULES} routing rules",
                                      domain=DOMAIN)
        rule = dr.new_rule(rule_id or new_id("r"), dict(fields), self.w.now_micros())
        uow = UnitOfWork()
        uow.insert(RULES.name, rule)
        try:
            await self.store.commit(uow)
        except DuplicateKey as exc:
            gone = await self.store.get(RULES.name, rule["_id"])
            if gone is None or not gone["deleted"]:
                raise already_exists("RULE_EXISTS", f"routing rule {rule['_id']!r} exists",
                                     domain=DOMAIN, rule_id=rule["_id"]) from exc
            return await self._recreate(gone, rule)
        return rule

    async def _recreate(self, gone: Doc, rule: Doc) -> Doc:
        """A deleted rule's id given again: the new rule takes it over, with the pool
        of groups named after it (their members stay) and its numbering, so a live
        code printed with that id works again and overflow groups never reuse a number."""
        async def attempt() -> Doc:
            current = await self.store.get(RULES.name, rule["_id"])
            if current is None or not current["deleted"]:  # taken again meanwhile
                raise already_exists("RULE_EXISTS", f"routing rule {rule['_id']!r} exists",
                                     domain=DOMAIN, rule_id=rule["_id"])
            revived = {**rule, "_v": current["_v"], "last_sequence": current["last_sequence"]}
            uow = UnitOfWork()
            uow.replace(RULES.name, revived)
            await self.store.commit(uow)
            self._changed(rule["_id"])
            return revived

        return await self.w.run(("pool", gone["_id"]), attempt)

    async def get_rule(self, rule_id: str) -> Doc:
        rule = await self.store.get(RULES.name, rule_id)
        if rule is None or rule["deleted"]:
            raise not_found("routing rule", rule_id, domain=DOMAIN)
        return rule

    async def scanned_rule(self, rule_id: str) -> Doc:
        """The rule a scan of its live code goes by: kept for RULE_KEPT_SECONDS (every
        scan of a busy code would read the same document). Safe to be a moment old:
        what routing writes with it (a new group's number) is guarded by its version,
        and a retry reads it afresh."""
        now = time.monotonic()
        kept = self._kept.get(rule_id)
        if kept is not None and now - kept[0] < RULE_KEPT_SECONDS:
            return kept[1]
        rule = await self.get_rule(rule_id)
        self._kept[rule_id] = (now, rule)
        return rule

    def _changed(self, rule_id: str) -> None:
        self._kept.pop(rule_id, None)

    async def list_rules(self, after: str, limit: int) -> list[Doc]:
        where: dict[str, Any] = {"deleted": False}
        if after:
            where["_id"] = {"$gt": after}
        return await self.store.find(RULES.name, where, limit=limit)

    async def update_rule(self, rule_id: str, changes: Mapping[str, Any]) -> Doc:
        async def attempt() -> Doc:
            rule = await self.get_rule(rule_id)
            updated = {**rule, **changes, "update_time": self.w.now_micros()}
            uow = UnitOfWork()
            uow.replace(RULES.name, updated)
            await self.store.commit(uow)
            self._changed(rule_id)
            return updated

        return await self.w.run(("pool", rule_id), attempt)

    async def delete_rule(self, rule_id: str) -> None:
        async def attempt() -> None:
            rule = await self.get_rule(rule_id)
            uow = UnitOfWork()
            uow.replace(RULES.name, {**rule, "deleted": True, "enabled": False,
                                     "update_time": self.w.now_micros()})
            await self.store.commit(uow)
            self._changed(rule_id)

        await self.w.run(("pool", rule_id), attempt)

    async def open_groups(self, rule_id: str) -> int:
        """Groups of the rule's pool with room now (an indexed count)."""
        return await open_groups_in_pool(self.store, rule_id)

    # -- routing --
    async def route(self, member_id: str, rule_id: str, store_id: str, city: str,
                    payment_id: str = "") -> Routed:
        lookup = self.membership.peers.lookup(member_id)
        if rule_id:
            rule = await self.scanned_rule(rule_id)
            if not rule["enabled"]:
                raise failed_precondition("RULE_DISABLED", f"routing rule {rule_id!r} is off",
                                          domain=DOMAIN, rule_id=rule_id)
        else:
            rule = await self._matching_rule(lookup, store_id, city)
        rule_id = rule["_id"]
        if rule["template"]:  # ask what the pool's entry rules need before taking the turn
            await self.membership.entry_facts(rule["template"]["entry_rules"], lookup,
                                              payment_id)

        # The rule read above serves the first attempt (a stale one cannot do harm: a
        # group it opens is written guarded by the rule's version); retries reload it.
        read = [rule]

        async def attempt() -> Routed:
            stats = await self.membership.member_stats(member_id)
            if stats is not None:  # in a group now or before: maybe routed here already
                current = await self.store.find(MEMBERSHIPS.name, {
                    "member_id": member_id, "pool_id": rule_id, "state": ACTIVE}, limit=1)
                if current:  # routed before (the code scanned twice): the same group
                    mine = await self.w.need(GROUPS.name, "group", current[0]["group_id"])
                    return Routed(Joined(mine, current[0], already_member=True), rule_id)
            rule = read.pop() if read else await self.get_rule(rule_id)
            uow = UnitOfWork()
            found = await open_pool_group(self.store, rule_id,
                                          dr.POOL_ORDER[rule["fill_strategy"]])
            opened = found is None
            group = await self._open_group(uow, rule) if found is None else found
            facts = await self.membership.entry_facts(group["entry_rules"], lookup, payment_id)
            joined = await self.membership.add_member(uow, group, member_id, stats, facts,
                                                      rule_id)
            if not joined.already_member:
                await self.store.commit(uow)
                if opened:  # the rule's numbering moved on
                    self._changed(rule_id)
            return Routed(joined, rule_id, opened)

        return await self.w.run(("pool", rule_id), attempt)

    async def _open_group(self, uow: UnitOfWork, rule: Doc) -> Doc:
        if not rule["template"]:
            raise RuleViolation("POOL_FULL", f"every group of rule {rule['_id']!r} is full"
                                " and the rule has no template to open another",
                                rule_id=rule["_id"])
        sequence = rule["last_sequence"] + 1
        # A number whose id a group made by hand has taken is skipped (ids are free).
        while await self.store.get(GROUPS.name, dr.pool_group_id(rule["_id"], sequence)):
            sequence += 1
        uow.replace(RULES.name, {**rule, "last_sequence": sequence})
        group = dr.overflow_group(rule, sequence, self.w.now_micros())
        self.w.emit(uow, group["_id"], GroupOpened(
            group_id=group["_id"], rule_id=rule["_id"], sequence=sequence, name=group["name"],
            owner_guide_id=group["owner_guide_id"]), self.w.now())
        return group

    async def _matching_rule(self, lookup: MemberLookup, store_id: str, city: str) -> Doc:
        rules = await self.store.find(RULES.name, {"deleted": False}, order=("priority",),
                                      limit=MAX_RULES)
        facts = dr.MatchFacts(store_id, city)
        home_asked = bool(store_id or city)
        for rule in rules:
            if not rule["enabled"]:
                continue
            match = rule["match"]
            if (match["store_ids"] or match["cities"]) and not home_asked:
                facts.store_id, facts.city = await lookup.home()
                home_asked = True
            wants_member, wants_tags, wants_segments = dr.needs(match)
            if wants_member and facts.tier_level is None:
                facts.tier_level = await lookup.tier_level()
            if wants_tags and facts.tags is None:
                facts.tags = await lookup.tags()
            if wants_segments:
                facts.segments.update(await lookup.segments(list(match["segment_ids"])))
            if dr.matches(match, facts):
                return rule
        raise failed_precondition("NO_MATCHING_RULE", "no enabled routing rule takes the member"
                                  " here", domain=DOMAIN)
