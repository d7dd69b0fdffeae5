"""Use cases that make two member records one: an operator's merge (MergeMembers) and
binding a WeChat-verified phone (BindVerifiedPhone), which merges when another member
holds that phone. The rules of a merge are domain/merging.py.

Atomic: a merge is one unit of work (both members guarded by the versions they were
read with, the identities, lots, ledger entries and orders that change hands, the
tier change and the MembersMerged event in the outbox): all of it or nothing.

Race-safe: a merge holds both members' writes in this process (retrying_all, in a
fixed order), so a redeem, payment or order on either member runs wholly before or
wholly after it; across replicas the members' versions (every write of a member's
value saves the member) and each order's version decide, and the loser goes round."""

from __future__ import annotations

from functools import partial

import structlog

from services.member.domain import merging as dmg
from services.member.domain.errors import RuleViolation
from services.member.domain.members import IdentityKind, Member
from services.member.events import EventWriter
from services.member.service import (
    DOMAIN,
    MAX_ATTEMPTS,
    MemberCore,
    NewIdentity,
    member_merged,
    rule_error,
)
from services.member.store import IDENTITIES, MemberWrite
from services.runtime.documents import DuplicateKey
from services.runtime.errors import conflict

log = structlog.get_logger("pond.member")
CAUSE_PHONE = "phone"
CAUSE_OPERATOR = "operator"


class _OwnerChanged(Exception):
    """The phone changed hands after the call chose which members to hold."""


class MergeUseCases(MemberCore):
    async def merge_members(
        self, surviving_id: str, merged_id: str, reason: str = "", request_id: str = ""
    ) -> Member:
        """Merges `merged_id` into `surviving_id` (an operator's decision); merging a
        pair merged before returns the survivor as it is."""
        return await self.retrying_all(
            {surviving_id, merged_id},
            lambda: self._merge_once(surviving_id, merged_id, CAUSE_OPERATOR, reason, request_id),
        )

    async def _merge_once(
        self,
        surviving_id: str,
        merged_id: str,
        cause: str,
        reason: str,
        request_id: str,
        release_phones: bool = False,
    ) -> Member:
        survivor = await self.member(surviving_id)
        merged = await self.member(merged_id)
        if merged.merged_into and merged.merged_into == survivor.id:
            return self.view(survivor)  # merged before: the same outcome
        program = await self.tier_program()
        now = self.now()
        window = program.window_start(now)
        rows = await self.store.rows_of(merged.id, window)
        # A verified phone replaces the merged record's other (claimed) phones.
        release = (
            [i.lookup for i in merged.identities if i.kind is IdentityKind.PHONE]
            if release_phones
            else []
        )
        before = survivor.tier_level
        try:
            result = dmg.merge(
                survivor,
                merged,
                rows,
                survivor_window_growth=await self.store.growth_since(survivor.id, window),
                program=program,
                now=now,
                consuming_threshold=self.rules.consuming_order_threshold,
                release=release,
            )
        except RuleViolation as exc:
            raise rule_error(exc) from exc
        events = EventWriter(now, request_id)
        w = MemberWrite()
        w.save_member(result.survivor)
        w.save_member(result.merged)
        for earlier_id in result.repoint:
            # Merged into `merged` before: now one hop from the new survivor.
            w.save_member(dmg.repointed(await self.member(earlier_id), survivor.id, now))
        for order in result.orders:
            w.save_order(order)
        w.rebind_identities(result.moved_lookups, survivor.id)
        w.release_identities(result.released_lookups)
        w.save_lots(result.lots)
        w.move_ledger_entries(result.points_entries, result.sv_entries)
        if result.tier_change is not None:
            w.add_tier_change(result.tier_change)
            events.tier(survivor.id, before, result.tier_change.to_level, dmg.MERGE_REASON)
        events.merged(survivor.id, merged.id, cause, reason)
        w.emit(*events.events)
        await self.commit(w)
        log.info(
            "members merged",
            surviving_id=survivor.id,
            merged_id=merged.id,
            cause=cause,
            reason=reason,
            orders=len(result.orders),
            lots=len(result.lots),
        )
        return self.view(result.survivor)

    async def bind_verified_phone(
        self, member_id: str, phone: NewIdentity, request_id: str = ""
    ) -> tuple[Member, str]:
        """Binds a phone that WeChat verified to `member_id`: added (replacing another
        phone the member has: the verified one wins) while nobody holds it, nothing
        to do when the member holds it, and when another member holds it, `member_id`
        is merged into that member (it carries the phone's history, e.g. from the
        POS). Returns (the member now holding the phone, the id merged away or "")."""
        lookup = self.lookup(phone)
        for _ in range(MAX_ATTEMPTS):
            owner = await self.store.member_id_for(lookup) or ""
            held = {member_id, owner} - {""}
            try:
                return await self.retrying_all(
                    held, partial(self._bind_once, member_id, phone, lookup, owner, request_id)
                )
            except _OwnerChanged:
                continue
        raise conflict(
            "CONCURRENT_UPDATE", "the phone changed hands concurrently; retry", domain=DOMAIN
        )

    async def _bind_once(
        self, member_id: str, phone: NewIdentity, lookup: str, owner: str, request_id: str
    ) -> tuple[Member, str]:
        m = await self.member(member_id)
        if (await self.store.member_id_for(lookup) or "") != owner:
            raise _OwnerChanged
        if m.merged_into:
            if m.merged_into == owner:  # bound (and merged) before: the same outcome
                return self.view(await self.member(owner)), m.id
            raise member_merged(m)
        if owner == m.id:
            return self.view(m), ""
        if owner:
            survivor = await self._merge_once(
                owner, m.id, CAUSE_PHONE, "verified phone", request_id, release_phones=True
            )
            return survivor, m.id
        now = self.now()
        replaced = [i.lookup for i in m.identities if i.kind is IdentityKind.PHONE]
        m.identities = [i for i in m.identities if i.kind is not IdentityKind.PHONE]
        m.identities.append(self.stored_identity(phone))
        self.touch(m, now)
        events = EventWriter(now, request_id)
        events.updated(m, ["identities"])
        w = MemberWrite()
        w.bind_identities([lookup], m.id)
        w.release_identities(replaced)
        w.save_member(m)
        w.emit(*events.events)
        try:
            await self.commit(w)
        except DuplicateKey as exc:
            if exc.collection != IDENTITIES.name:
                raise
            raise _OwnerChanged from exc  # bound by another replica meanwhile: go round
        return self.view(m), ""
