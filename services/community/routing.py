"""Live-code routing (活码): routing rules and RouteMember.

A rule is chosen (the live code's, or the first enabled rule by priority whose match
fits the member and the context), then its pool gives the group: the first open
group by the rule's fill order, one indexed read however many groups the brand has.
When no group of the pool has room, a group is opened from the rule's template (the
pool's next sequence number, committed with the rule's last_sequence, so two routers
never open the same number twice) and announced (GroupOpened); without a template the
pool is full (POOL_FULL). The chosen group's entry rules are checked and the member
joins, in one unit of work with the group's count.

Scans of one pool are routed in batches, one batch of a pool at a time in the
process (the pool's queue is its turn; no lock): while a batch is being written,
the scans that arrive wait for the next one (up to MAX_BATCH), which reads
the pool's open groups once, chooses each member's group in memory as routing them
one by one would (domain.routing.PoolFill), writes each group joined once and commits
every join together. So 1,000 concurrent joins never conflict among themselves, open
exactly the groups they fill and cost a read and a commit per batch, not per join.
Each member gets their own answer or error (an entry rule they fail is theirs alone).
Across replicas the guards (the group's version, the rule's version, the overflow
group's id) decide and the losing batch routes again."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from services.community.domain import routing as dr
from services.community.domain.errors import RuleViolation
from services.community.events import GroupOpened
from services.community.membership import ACTIVE, Joined, Membership, write_group
from services.community.peers import MemberLookup
from services.community.store import (
    GROUPS,
    MEMBERSHIPS,
    RULES,
    open_groups_in_pool,
    open_pool_groups,
)
from services.community.writes import DOMAIN, Writes, rule_error
from services.runtime.documents import Doc, DuplicateKey, UnitOfWork
from services.runtime.errors import (
    Unavailable,
    already_exists,
    failed_precondition,
    not_found,
)
from services.runtime.ids import new_id

MAX_RULES = 1000  # rules a brand may have: routing by context reads them in order
# Scans of one pool routed together: one read of the pool, one write of each group
# joined and one commit for up to this many joins.
MAX_BATCH = 100
# How long a scan may use a rule read by an earlier scan. A change made on this
# replica applies at once (it drops the kept rule); one made on another, within this.
RULE_KEPT_SECONDS = 1.0


@dataclass
class Routed:
    joined: Joined
    rule_id: str
    opened_group: bool = False


@dataclass
class _Scan:
    """A route waiting for its pool's next batch."""

    member_id: str
    lookup: MemberLookup
    payment_id: str
    rule: Doc  # as read for the scan
    future: asyncio.Future[Routed] = field(init=False)  # a queued scan's answer


Outcome = Routed | Exception | None  # None: routed in the next batch


def _take_batch(queue: list[_Scan]) -> list[_Scan]:
    """Up to MAX_BATCH of the queue's scans, in arrival order, taken off it: not the
    ones whose caller gave up, nor a member's second scan (it waits for the next
    batch, which finds the first one's join)."""
    batch: list[_Scan] = []
    members: set[str] = set()
    kept: list[_Scan] = []
    for scan in queue:
        if scan.future.done():
            continue
        if len(batch) < MAX_BATCH and scan.member_id not in members:
            batch.append(scan)
            members.add(scan.member_id)
        else:
            kept.append(scan)
    queue[:] = kept
    return batch


def _stopping() -> Unavailable:
    return Unavailable("STOPPING", "the service is stopping; route again", domain=DOMAIN)


class Routing:
    def __init__(self, writes: Writes, membership: Membership) -> None:
        self.w = writes
        self.store = writes.store
        self.membership = membership
        self._kept: dict[str, tuple[float, Doc]] = {}  # rule id -> (read at, rule)
        self._queues: dict[str, list[_Scan]] = {}  # rule id -> scans waiting for a batch
        self._draining: set[asyncio.Task[None]] = set()  # each pool's batches, while any

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
        if rule["template"]:  # ask what the pool's entry rules need before queueing
            await self.membership.entry_facts(rule["template"]["entry_rules"], lookup,
                                              payment_id)
        rule_id = rule["_id"]
        scan = _Scan(member_id, lookup, payment_id, rule)
        queue = self._queues.get(rule_id)
        if queue is not None:  # the pool's batch is being written: wait for the next
            scan.future = asyncio.get_running_loop().create_future()
            queue.append(scan)
            return await scan.future
        # An idle pool: this scan is routed here, alone (no task, no hand-over); scans
        # arriving meanwhile queue, and a task routes them in batches.
        self._queues[rule_id] = queue = []
        try:
            outcome: Outcome = None
            while outcome is None:
                outcome = (await self._routed_batch(rule_id, [scan]))[0]
        finally:
            if queue:
                task = asyncio.get_running_loop().create_task(self._drain(rule_id, queue))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
            else:
                del self._queues[rule_id]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self, rule_id: str, queue: list[_Scan]) -> None:
        """Routes the pool's queued scans, a batch at a time, until none is left; each
        scan's caller gets its own answer or error."""
        try:
            while queue:
                batch = _take_batch(queue)
                if not batch:
                    continue
                try:
                    outcomes = await self._routed_batch(rule_id, batch)
                except Exception as exc:  # the batch as a whole failed
                    outcomes = [exc] * len(batch)
                except BaseException:
                    for scan in batch:
                        if not scan.future.done():
                            scan.future.set_exception(_stopping())
                    raise
                deferred = []
                for scan, outcome in zip(batch, outcomes, strict=True):
                    if outcome is None:
                        deferred.append(scan)
                    elif not scan.future.done():
                        if isinstance(outcome, Routed):
                            scan.future.set_result(outcome)
                        else:
                            scan.future.set_exception(outcome)
                queue[:0] = deferred
        finally:
            del self._queues[rule_id]
            for scan in queue:  # only when cancelled (the service stopping)
                if not scan.future.done():
                    scan.future.set_exception(_stopping())

    async def _routed_batch(self, rule_id: str, batch: list[_Scan]) -> list[Outcome]:
        """The batch routed, again while it loses races (no lock: the pool's queue is
        its turn in this process)."""
        return await self.w.run(None, functools.partial(self._route_batch, rule_id, batch,
                                                        [0]))

    async def _route_batch(self, rule_id: str, batch: list[_Scan],
                           attempts: list[int]) -> list[Outcome]:
        """One attempt at the batch: each scan's Routed, its error, or None (routed in
        the next batch), with every join committed in one unit of work. A lost race
        (Conflict, DuplicateKey) leaves nothing written and the whole batch goes again
        (`attempts`: the batch's count of them, so that a retry reads the rule again)."""
        attempts[0] += 1
        outcomes: list[Outcome] = [None] * len(batch)
        joining: list[tuple[int, _Scan, Doc | None]] = []
        for i, scan in enumerate(batch):
            stats = await self.membership.member_stats(scan.member_id)
            if stats is not None:  # in a group now or before: maybe routed here already
                here = await self.store.find(MEMBERSHIPS.name, {
                    "member_id": scan.member_id, "pool_id": rule_id, "state": ACTIVE}, limit=1)
                if here:  # routed before (the code scanned twice): the same group
                    mine = await self.w.need(GROUPS.name, "group", here[0]["group_id"])
                    outcomes[i] = Routed(Joined(mine, here[0], already_member=True), rule_id)
                    continue
            joining.append((i, scan, stats))
        if not joining:
            return outcomes
        # The scans' rule serves the first attempt (a stale one cannot do harm: a group
        # it opens is written guarded by the rule's version); retries reload it.
        rule = await self.get_rule(rule_id) if attempts[0] > 1 else batch[-1].rule
        fill = dr.PoolFill(rule["fill_strategy"], await open_pool_groups(
            self.store, rule_id, dr.POOL_ORDER[rule["fill_strategy"]], len(joining)),
            len(joining))
        uow = UnitOfWork()
        joined_groups: dict[str, Doc] = {}
        opening: Doc | None = None  # the group this batch opens (at most one)
        for i, scan, stats in joining:
            choice = fill.next_group()
            if choice is dr.UNDECIDED or (choice is dr.OPEN_NEW and opening is not None):
                break  # these and the rest go in the next batch
            try:
                if choice is dr.OPEN_NEW:
                    opening = await self._next_group(rule)
                    fill.update(opening)
                    group = opening
                else:
                    group = cast(Doc, choice)
                facts = await self.membership.entry_facts(group["entry_rules"], scan.lookup,
                                                          scan.payment_id)
                current = await self.membership.joinable(group, scan.member_id, stats, facts)
            except RuleViolation as exc:
                outcomes[i] = rule_error(exc)
                continue
            except Exception as exc:  # another service's answer, say: this scan's alone
                outcomes[i] = exc
                continue
            if current is not None and current["state"] == ACTIVE:
                # Not expected (the find above sees the pool's active memberships);
                # answered as add_member does rather than counted twice.
                outcomes[i] = Routed(Joined(group, current, already_member=True), rule_id)
                continue
            # The group as opened is only ever chosen until its first join replaces it.
            opened = group is opening
            if opened:  # its first member: the group is opened, then joined
                self._announce_opening(uow, rule, group)
            joined = self.membership.admit(uow, group, scan.member_id, stats, current,
                                           rule_id)
            joined_groups[group["_id"]] = joined.group
            fill.update(joined.group)
            outcomes[i] = Routed(joined, rule_id, opened)
        for group in joined_groups.values():
            write_group(uow, group)
        if joined_groups:
            await self.store.commit(uow)
            if opening is not None and opening["_id"] in joined_groups:
                self._changed(rule_id)  # the rule's numbering moved on
        return outcomes

    async def _next_group(self, rule: Doc) -> Doc:
        """The pool's next group from the rule's template (not written yet)."""
        if not rule["template"]:
            raise RuleViolation("POOL_FULL", f"every group of rule {rule['_id']!r} is full"
                                " and the rule has no template to open another",
                                rule_id=rule["_id"])
        sequence = rule["last_sequence"] + 1
        # A number whose id a group made by hand has taken is skipped (ids are free).
        while await self.store.get(GROUPS.name, dr.pool_group_id(rule["_id"], sequence)):
            sequence += 1
        return dr.overflow_group(rule, sequence, self.w.now_micros())

    def _announce_opening(self, uow: UnitOfWork, rule: Doc, group: Doc) -> None:
        uow.replace(RULES.name, {**rule, "last_sequence": group["sequence"]})
        self.w.emit(uow, group["_id"], GroupOpened(
            group_id=group["_id"], rule_id=rule["_id"], sequence=group["sequence"],
            name=group["name"], owner_guide_id=group["owner_guide_id"]), self.w.now())

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
