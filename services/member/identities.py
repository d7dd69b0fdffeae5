"""Identities: registering (get or create by identity), adding an identity, finding a
member by one. What an identity proves depends on who presents it (IdentityTrust,
decided by the api layer from the caller's role); the rules are in domain/members."""

from __future__ import annotations

from services.member.domain import members as dm
from services.member.domain.members import Member
from services.member.events import EventWriter
from services.member.service import DOMAIN, MemberCore, NewIdentity
from services.member.store import IDENTITIES, MemberWrite
from services.runtime.documents import Conflict, DuplicateKey
from services.runtime.errors import (
    PondError,
    already_exists,
    invalid_argument,
    not_found,
    permission_denied,
)
from services.runtime.ids import new_id


def identity_conflict(exc: dm.IdentityConflict, trust: dm.IdentityTrust) -> PondError:
    """ALREADY_EXISTS; the owners' ids only for callers that may see who owns what
    (others would learn whose phone a number is)."""
    several = exc.reason == "IDENTITIES_BELONG_TO_DIFFERENT_MEMBERS"
    if not trust.sees_owners:
        message = (
            "these identities belong to different members"
            if several
            else "an identity in this request belongs to another member"
        )
        return already_exists(exc.reason, message, domain=DOMAIN)
    if several:
        return already_exists(
            exc.reason,
            f"these identities belong to members {', '.join(exc.owners)}",
            domain=DOMAIN,
            member_ids=",".join(exc.owners),
        )
    owner = exc.owners[0]
    return already_exists(
        exc.reason, f"this identity belongs to member {owner}", domain=DOMAIN, member_id=owner
    )


class IdentityUseCases(MemberCore):
    """Registering members and binding their identities."""

    async def register(
        self,
        identities: list[NewIdentity],
        fields: dict,
        request_id: str = "",
        trust: dm.IdentityTrust = dm.IdentityTrust(),
    ) -> tuple[Member, bool]:
        """Get or create the member that `identities` identify (see IdentityTrust for
        what they prove for this caller), adding those it does not have yet."""
        if not any(i.kind in trust.proving for i in identities):
            kinds = " or ".join(sorted(k.name for k in trust.proving))
            raise permission_denied(f"this caller registers members by a {kinds} identity")
        lookups = {self.lookup(i): i for i in identities}

        async def once() -> tuple[Member, bool]:
            owners = {lk: await self.store.member_id_for(lk) for lk in lookups}
            try:
                owner = dm.registration_owner(
                    [(lookups[lk].kind, o) for lk, o in owners.items()], trust
                )
            except dm.IdentityConflict as exc:
                raise identity_conflict(exc, trust) from exc
            now = self.now()
            events = EventWriter(now, request_id)
            if owner:
                missing = [lk for lk, o in owners.items() if not o]
                if not missing:
                    return self.view(await self.member(owner)), False
                # A write to a known member: in turn with its other writes.
                async with self._writing.hold(owner):
                    m = await self.member(owner)
                    m.identities += [self.stored_identity(lookups[lk]) for lk in missing]
                    self.touch(m, now)
                    events.updated(m, ["identities"])
                    await self._commit_identities(self._identity_write(m, missing, events))
                return self.view(m), False
            referrer = fields.get("referrer_id", "")
            if referrer and await self.store.get_member(referrer) is None:
                raise invalid_argument([("referrer_id", "no member has this id")], domain=DOMAIN)
            m = Member(
                id=new_id("m"),
                identities=[self.stored_identity(i) for i in identities],
                created_at=now,
                updated_at=now,
                tier_since=now,
                **fields,
            )
            self.touch(m, now)
            events.registered(m)
            await self._commit_identities(self._identity_write(m, lookups, events))
            return m, True

        # The member may not exist yet: no one's writes to hold off (the unique
        # identities decide a race between two registrations).
        return await self.retrying("", once)

    @staticmethod
    def _identity_write(m: Member, lookups, events: EventWriter) -> MemberWrite:
        """Binds `lookups` to `m` (refused first if one is taken) and saves `m`."""
        w = MemberWrite()
        w.bind_identities(lookups, m.id)
        w.save_member(m)
        w.emit(*events.events)
        return w

    async def _commit_identities(self, w: MemberWrite) -> None:
        try:
            await self.commit(w)
        except DuplicateKey as exc:
            if exc.collection != IDENTITIES.name:
                raise
            # Lost a race with another registration: go round and find the owner.
            raise Conflict(exc.collection, exc.key) from exc

    async def add_identity(
        self,
        member_id: str,
        ident: NewIdentity,
        request_id: str = "",
        trust: dm.IdentityTrust = dm.IdentityTrust(),
    ) -> Member:
        lookup = self.lookup(ident)

        async def once() -> Member:
            m = await self.active_member(member_id)
            owner = await self.store.member_id_for(lookup)
            if owner == m.id:
                return self.view(m)
            if owner:
                raise identity_conflict(dm.IdentityConflict("IDENTITY_TAKEN", [owner]), trust)
            now = self.now()
            m.identities.append(self.stored_identity(ident))
            self.touch(m, now)
            events = EventWriter(now, request_id)
            events.updated(m, ["identities"])
            try:
                await self.commit(self._identity_write(m, [lookup], events))
            except DuplicateKey as exc:
                if exc.collection != IDENTITIES.name:
                    raise
                taker = await self.store.member_id_for(lookup) or ""
                if taker == m.id:  # bound meanwhile by another replica: go round
                    raise Conflict(exc.collection, exc.key) from exc
                conflict = dm.IdentityConflict("IDENTITY_TAKEN", [taker])
                raise identity_conflict(conflict, trust) from exc
            return self.view(m)

        return await self.retrying(member_id, once)

    async def find(self, ident: NewIdentity) -> Member:
        member_id = await self.store.member_id_for(self.lookup(ident))
        if member_id is None:
            raise not_found("member", f"{ident.kind.name.lower()} identity", domain=DOMAIN)
        return self.view(await self.read_member(member_id))
