"""Graduation: the members of a tagging segment who are in first-level groups move
into the pool of a routing rule of second-level, top, VIP or KOC groups.

Who: tagging's StreamSegmentMembers (the segment's members in chunks, one call
through the service client), then each member's active memberships (one indexed
read) for their first-level groups. We stream the segment rather than ask
CheckMembership for every member of the first-level groups: segments that graduate
(buyers, heavy buyers) are far smaller than the first-level population, and the
stream is one call where the other is one per member. Bounded: at most
MAX_SEGMENT_MEMBERS streamed and MAX_CANDIDATES moving (SEGMENT_TOO_LARGE,
GRADUATION_TOO_LARGE otherwise, before anything is written).

Where: the routing pool logic. A dry run places the candidates with the pool's fill
order in memory (capacity kept, overflow groups numbered on) after checking the
target's entry rules, and writes nothing. The real run routes each candidate into the
pool with the live code's own use case (entry rules, capacity, overflow, events),
then takes them out of their first-level groups (removed by "graduation:<id>",
reason "graduated"), and records each member's move or skip.

Idempotent: the graduation id names the batch (its parameters kept: another segment
or rule under the same id is IDEMPOTENCY_KEY_REUSED). A finished batch run again
answers its report; one a crash cut short continues, members already recorded keep
their result, and routing answers a member already in the pool with their group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pond.tagging.v1 import tagging_pb2

from services.community.domain import graduation as dgr
from services.community.domain import groups as dg
from services.community.domain import routing as dr
from services.community.domain.errors import RuleViolation
from services.community.membership import ACTIVE, Membership
from services.community.routing import Routing
from services.community.store import GRADUATION_RESULTS, GRADUATIONS, GROUPS, MEMBERSHIPS
from services.community.writes import DOMAIN, Writes
from services.runtime.documents import Doc, DuplicateKey, UnitOfWork
from services.runtime.errors import FailedPrecondition, NotFound, failed_precondition
from services.runtime.idempotency import key_reused

MAX_SEGMENT_MEMBERS = 200_000
MAX_CANDIDATES = 10_000
STREAM_SECONDS = 120.0


@dataclass
class Report:
    graduation_id: str
    dry_run: bool
    moves: list[Doc] = field(default_factory=list)  # member_id, from_group_ids, to, opened
    skipped: list[Doc] = field(default_factory=list)  # member_id, reason
    segment_members: int = 0
    not_in_first_level: int = 0
    replayed: bool = False


@dataclass
class Candidate:
    member_id: str
    from_group_ids: list[str]
    already_in_target: bool = False


class Graduation:
    def __init__(self, writes: Writes, membership: Membership, routing: Routing) -> None:
        self.w = writes
        self.store = writes.store
        self.membership, self.routing = membership, routing
        self.peers = membership.peers

    async def graduate(self, graduation_id: str, segment_id: str, rule_id: str,
                       dry_run: bool) -> Report:
        rule = await self.routing.get_rule(rule_id)
        await self._check_target(rule)
        params = {"segment_id": segment_id, "target_rule_id": rule_id}
        if not dry_run:
            known = await self.store.get(GRADUATIONS.name, graduation_id)
            if known is not None:
                if {k: known[k] for k in params} != params:
                    raise key_reused(graduation_id, domain=DOMAIN)
                if known["state"] == "done":
                    report = await self._report(known)
                    report.replayed = True
                    return report
        members = await self._segment(segment_id)
        report = Report(graduation_id, dry_run, segment_members=len(members))
        done = {} if dry_run else await self._results(graduation_id)
        candidates: list[Candidate] = []
        for member_id in members:
            if member_id in done:
                continue
            candidate = await self._candidate(member_id, rule_id)
            if candidate is None:
                report.not_in_first_level += 1
            else:
                candidates.append(candidate)
        if len(candidates) > MAX_CANDIDATES:
            raise failed_precondition(
                "GRADUATION_TOO_LARGE", f"{len(candidates)} members would move; at most"
                f" {MAX_CANDIDATES} per graduation: use a narrower segment", domain=DOMAIN)
        if dry_run:
            await self._plan(report, rule, candidates)
            return report
        graduation = await self._start(graduation_id, params, len(members))
        for candidate in candidates:
            await self._move(graduation_id, rule_id, candidate)
        uow = UnitOfWork()
        uow.replace(GRADUATIONS.name, {**graduation, "state": "done",
                                       "segment_members": len(members),
                                       "not_in_first_level": report.not_in_first_level,
                                       "finish_time": self.w.now_micros()})
        await self.store.commit(uow)
        return await self._report(await self.w.need(GRADUATIONS.name, "graduation",
                                                    graduation_id))

    # -- who --
    async def _check_target(self, rule: Doc) -> None:
        template = rule.get("template")
        if template:
            kind, level = template["kind"], template["level"] or dg.FIRST_LEVEL
        else:
            found = await self.store.find(GROUPS.name, {"pool_id": rule["_id"]}, limit=1)
            kind, level = (found[0]["kind"], found[0]["level"]) if found else (0, 0)
        if not dgr.is_graduation_target(kind, level):
            raise failed_precondition(
                "NOT_A_GRADUATION_TARGET", f"rule {rule['_id']!r} does not fill second-level,"
                " top, VIP or KOC groups", domain=DOMAIN, rule_id=rule["_id"])

    async def _segment(self, segment_id: str) -> list[str]:
        client = self.peers.tagging
        members: list[str] = []
        try:
            async for chunk in client.stream(
                    client.stub.StreamSegmentMembers,
                    tagging_pb2.StreamSegmentMembersRequest(id=segment_id, chunk_size=5000),
                    timeout=STREAM_SECONDS):
                members.extend(chunk.member_ids)
                if len(members) > MAX_SEGMENT_MEMBERS:
                    raise failed_precondition(
                        "SEGMENT_TOO_LARGE", f"segment {segment_id!r} has more than"
                        f" {MAX_SEGMENT_MEMBERS} members", domain=DOMAIN)
        except NotFound as exc:
            raise failed_precondition("SEGMENT_NOT_FOUND", f"tagging has no segment"
                                      f" {segment_id!r}", domain=DOMAIN,
                                      segment_id=segment_id) from exc
        return sorted(set(members))

    async def _candidate(self, member_id: str, rule_id: str) -> Candidate | None:
        current = await self.store.find(MEMBERSHIPS.name, {"member_id": member_id,
                                                           "state": ACTIVE}, limit=100)
        groups = await self.store.get_many(GROUPS.name, [m["group_id"] for m in current])
        leaving = dgr.first_level_groups(groups, rule_id)
        if not leaving:
            return None
        in_target = any(m["pool_id"] == rule_id for m in current)
        return Candidate(member_id, leaving, in_target)

    # -- dry run --
    async def _plan(self, report: Report, rule: Doc, candidates: list[Candidate]) -> None:
        open_groups = await self.store.find(
            GROUPS.name, {"pool_id": rule["_id"], "open": True},
            order=dr.POOL_ORDER[rule["fill_strategy"]], limit=MAX_CANDIDATES)
        plan = dgr.PoolPlan(rule, open_groups)
        rules_of = {g["_id"]: g["entry_rules"] for g in open_groups}
        template_rules = (rule.get("template") or {}).get("entry_rules") or {}
        for c in candidates:
            reason = "ALREADY_IN_TARGET" if c.already_in_target else ""
            target = plan.next_group()
            if not reason and target is None:
                reason = "POOL_FULL"
            if not reason:  # the entry rules of the group it would join
                rules = rules_of.get(target or "", template_rules)
                try:
                    facts = await self.membership.entry_facts(
                        rules, self.peers.lookup(c.member_id))
                    dg.check_entry(rules, facts)
                except (RuleViolation, FailedPrecondition) as exc:
                    reason = exc.reason
            if reason:
                report.skipped.append({"member_id": c.member_id, "reason": reason})
                continue
            placed = plan.place(c.member_id)
            report.moves.append({"member_id": c.member_id, "from_group_ids": c.from_group_ids,
                                 "to_group_id": placed.group_id,
                                 "opens_group": placed.opens_group})

    # -- real run --
    async def _results(self, graduation_id: str) -> dict[str, Doc]:
        docs = await self.store.find(GRADUATION_RESULTS.name, {"graduation_id": graduation_id},
                                     limit=MAX_CANDIDATES + 1)
        return {d["member_id"]: d for d in docs}

    async def _start(self, graduation_id: str, params: dict[str, str], members: int) -> Doc:
        doc = await self.store.get(GRADUATIONS.name, graduation_id)
        if doc is not None:
            return doc
        doc = {"_id": graduation_id, **params, "state": "running",
               "start_time": self.w.now_micros(), "segment_members": members}
        uow = UnitOfWork()
        uow.insert(GRADUATIONS.name, doc)
        try:
            await self.store.commit(uow)
        except DuplicateKey:  # started concurrently under the same id
            return await self.w.need(GRADUATIONS.name, "graduation", graduation_id)
        return doc

    async def _move(self, graduation_id: str, rule_id: str, c: Candidate) -> None:
        result: dict[str, Any] = {
            "_id": f"{graduation_id}:{c.member_id}", "graduation_id": graduation_id,
            "member_id": c.member_id, "from_group_ids": c.from_group_ids, "to_group_id": "",
            "opens_group": False, "reason": ""}
        if c.already_in_target:
            result["reason"] = "ALREADY_IN_TARGET"
        else:
            try:
                routed = await self.routing.route(c.member_id, rule_id, "", "")
            except FailedPrecondition as exc:
                result["reason"] = exc.reason
            else:
                result.update(to_group_id=routed.joined.group["_id"],
                              opens_group=routed.opened_group)
                for group_id in c.from_group_ids:
                    try:
                        await self.membership.leave(group_id, c.member_id,
                                                    removed_by=f"graduation:{graduation_id}",
                                                    reason="graduated")
                    except FailedPrecondition:
                        pass  # left meanwhile
        uow = UnitOfWork()
        uow.put(GRADUATION_RESULTS.name, result)
        await self.store.commit(uow)

    async def _report(self, graduation: Doc) -> Report:
        report = Report(graduation["_id"], False,
                        segment_members=graduation.get("segment_members", 0),
                        not_in_first_level=graduation.get("not_in_first_level", 0))
        for d in sorted((await self._results(graduation["_id"])).values(),
                        key=lambda d: d["member_id"]):
            if d["reason"]:
                report.skipped.append({"member_id": d["member_id"], "reason": d["reason"]})
            else:
                report.moves.append({k: d[k] for k in (
                    "member_id", "from_group_ids", "to_group_id", "opens_group")})
        return report
