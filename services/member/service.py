"""The member service's units of work: load, apply the domain rules, commit the
write (a MemberWrite: a runtime UnitOfWork) with its events and idempotency record,
retry on a concurrent change.

Concurrency: every write to a member runs through `retrying` (or `idempotent`, built
on it) under that member's key. Within one process the attempts on one member take
turns (a keyed lock), so they never conflict and contention is never a failure: each
attempt sees the one before it committed. Across processes (replicas) the store's
guards decide (the member's version, an order's version); the loser (Conflict)
reloads and tries again after a short, growing, jittered pause (the runtime's
Retrying, as every service's writes).

Idempotent calls (services.runtime.idempotency) keep their first response: the api
passes an IdempotentCall whose render turns the use case's result into the response;
a replay returns the stored response.

No gRPC here (api.py translates); no rules here (domain/ decides)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf import message

from services.member.domain import members as dm
from services.member.domain import points as dp
from services.member.domain.errors import RuleViolation
from services.member.domain.members import Identity, IdentityKind, Member
from services.member.domain.points import PointsEntryKind
from services.member.domain.tiers import DEFAULT_PROGRAM, TierChange, TierProgram, upgrade_to
from services.member.events import EventWriter
from services.member.store import MemberFilter, MemberStore, MemberWrite
from services.runtime.clock import Clock
from services.runtime.crypto import FieldCipher
from services.runtime.documents import Conflict
from services.runtime.errors import (
    PondError,
    broken_rule,
    conflict,
    failed_precondition,
    not_found,
)
from services.runtime.idempotency import (
    DEFAULT_RETENTION,
    IdempotencyKeeper,
    IdempotentCall,
)
from services.runtime.ids import new_id
from services.runtime.retrying import DEFAULT_ATTEMPTS, Retrying

DOMAIN = "pond.member"
MAX_ATTEMPTS = DEFAULT_ATTEMPTS  # also for loops that re-read who to hold (merges)
T = TypeVar("T")
R = TypeVar("R", bound=message.Message)


@dataclass(frozen=True)
class LoyaltyRules:
    """The brand's loyalty settings (configuration, see MemberSettings)."""

    consuming_order_threshold: int = 1
    points_per_yuan: int = 1
    growth_per_yuan: int = 1
    points_valid_days: int = 365
    timezone: str = "Asia/Shanghai"  # whose calendar birthdays follow


@dataclass(frozen=True)
class NewIdentity:
    kind: IdentityKind
    value: str  # phones already normalized
    app_id: str = ""


def rule_error(exc: RuleViolation) -> PondError:
    return broken_rule(exc, domain=DOMAIN)


def member_merged(m: Member) -> PondError:
    """A write to a member that was merged away: the caller follows merged_into."""
    return failed_precondition(
        "MEMBER_MERGED",
        f"member {m.id} was merged into member {m.merged_into} and takes no new activity",
        domain=DOMAIN,
        member_id=m.id,
        merged_into=m.merged_into,
    )


class MemberCore:
    """Shared plumbing for the member service's use cases."""

    def __init__(
        self,
        store: MemberStore,
        clock: Clock,
        cipher: FieldCipher,
        rules: LoyaltyRules,
        on_commit: Callable[[], None] = lambda: None,
        idempotency_retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cipher = cipher
        self.rules = rules
        self.idempotency = IdempotencyKeeper(
            store.docs, clock, idempotency_retention, domain=DOMAIN
        )
        self._on_commit = on_commit
        self._program: tuple[float, TierProgram] | None = None
        # By member id: one write at a time per member in this process; across
        # replicas the member's version decides and the loser goes again.
        self._writing = Retrying(
            lambda: conflict(
                "CONCURRENT_UPDATE", "the member changed concurrently; retry", domain=DOMAIN
            ),
            retry_on=(Conflict,),
        )

    # -- plumbing --
    async def commit(self, w: MemberWrite) -> None:
        await self.store.commit(w)
        if w.events:
            self._on_commit()

    @staticmethod
    def write(m: Member, events: EventWriter | None = None) -> MemberWrite:
        """A write of `m` (guarded by the version it was read with) and its events."""
        w = MemberWrite()
        w.save_member(m)
        if events is not None:
            w.emit(*events.events)
        return w

    async def retrying(self, member_id: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs `attempt` (load, decide, commit) with the member's writes in this
        process held off, again when another replica's change won the race (see the
        module docstring). `member_id` "": nothing to hold (a member not known yet)."""
        return await self._writing.run(member_id or None, attempt)

    async def retrying_all(self, member_ids: set[str], attempt: Callable[[], Awaitable[T]]) -> T:
        """`retrying` holding several members' writes (a merge)."""
        return await self._writing.run_all(set(member_ids), attempt)

    async def idempotent(
        self,
        member_id: str,
        call: IdempotentCall[R],
        attempt: Callable[[], Awaitable[tuple[MemberWrite | None, object]]],
    ) -> R:
        """The first response for a known key (same request; IDEMPOTENCY_KEY_REUSED
        with other parameters), otherwise runs `attempt` -> (write, result) and
        commits the write with the rendered result as the record; retrying on
        `member_id`, the member the write changes."""
        return await self.retrying(
            member_id, lambda: self.idempotency.run(call, attempt, self.commit)
        )

    def now(self) -> datetime:
        return self.clock.now()

    def grant_points(
        self,
        m: Member,
        points: int,
        now: datetime,
        *,
        kind: PointsEntryKind = PointsEntryKind.EARN,
        reason: str = "",
        order_id: str = "",
        earned_at: datetime | None = None,
    ) -> dp.PointsMove:
        """`points` given to `m` now, as a lot earned at `earned_at` (default now) that
        expires the brand's validity period (POND_POINTS_VALID_DAYS) after that."""
        earned_at = earned_at or now
        return dp.grant(
            entry_id=new_id("p"),
            member_id=m.id,
            balance=m.points_balance,
            points=points,
            now=now,
            kind=kind,
            reason=reason,
            order_id=order_id,
            earned_at=earned_at,
            expires_at=earned_at + timedelta(days=self.rules.points_valid_days),
        )

    def touch(self, m: Member, now: datetime) -> None:
        m.kind = dm.derive_kind(m, now, self.rules.consuming_order_threshold)
        m.updated_at = now

    async def member(self, member_id: str) -> Member:
        m = await self.store.get_member(member_id) if member_id else None
        if m is None:
            raise not_found("member", member_id, domain=DOMAIN)
        return m

    async def read_member(self, member_id: str) -> Member:
        """`member` for reading only: shared, never to be changed."""
        m = await self.store.read_member(member_id) if member_id else None
        if m is None:
            raise not_found("member", member_id, domain=DOMAIN)
        return m

    async def active_member(self, member_id: str) -> Member:
        """The member for a write: one merged into another takes no new activity."""
        m = await self.member(member_id)
        if m.merged_into:
            raise member_merged(m)
        return m

    def view(self, m: Member) -> Member:
        """The member as of now: a paid membership past its end shows its lapsed kind
        even before the maintenance sweep stores it."""
        kind = dm.derive_kind(m, self.now(), self.rules.consuming_order_threshold)
        if kind is not m.kind:
            m = m.copy()
            m.kind = kind
        return m

    async def tier_program(self) -> TierProgram:
        # Cached briefly: read on every order, changed a few times a year. An
        # unchanged programme keeps its object, so what is derived from it (the api's
        # shown members) stays valid across the re-reads.
        if self._program and time.monotonic() - self._program[0] < 5:
            return self._program[1]
        program = await self.store.get_tier_program() or DEFAULT_PROGRAM
        if self._program and self._program[1] == program:
            program = self._program[1]
        self._program = (time.monotonic(), program)
        return program

    def forget_program(self) -> None:
        self._program = None

    def lookup(self, ident: NewIdentity) -> str:
        if ident.kind is IdentityKind.PHONE:
            return f"phone:{self.cipher.lookup_hash(ident.value)}"
        return dm.identity_lookup(ident.kind, ident.value, ident.app_id)

    def stored_identity(self, ident: NewIdentity) -> Identity:
        if ident.kind is IdentityKind.PHONE:
            return Identity(ident.kind, self.lookup(ident), self.cipher.encrypt(ident.value))
        return Identity(ident.kind, self.lookup(ident), ident.value, ident.app_id)

    def reveal(self, identity: Identity) -> str:
        return (
            self.cipher.decrypt(identity.value)
            if identity.kind is IdentityKind.PHONE
            else identity.value
        )

    async def apply_tier_upgrade(
        self, m: Member, now: datetime, events: EventWriter, w: MemberWrite, extra_growth: int = 0
    ) -> None:
        program = await self.tier_program()
        if m.tier_level + 1 >= len(program.tiers) or (
            m.growth_value < program.tiers[m.tier_level + 1].growth_threshold
        ):
            # Growth in the window never exceeds lifetime growth: no upgrade possible.
            return
        qualifying = await self.store.growth_since(m.id, program.window_start(now)) + extra_growth
        target = upgrade_to(program, m.tier_level, qualifying)
        if target is not None:
            w.add_tier_change(TierChange(m.id, m.tier_level, target, "growth", now))
            events.tier(m.id, m.tier_level, target, "growth")
            m.tier_level, m.tier_since = target, now


class MemberUseCases(MemberCore):
    """Getting, listing and updating members (identities: identities.py)."""

    async def get(self, member_id: str) -> Member:
        """The member as of now, for reading only (see MemberStore.read_member)."""
        return self.view(await self.read_member(member_id))

    async def list(self, flt: MemberFilter, after_id: str, limit: int) -> list[Member]:
        return [self.view(m) for m in await self.store.list_members(flt, after_id, limit)]

    async def update(
        self, member_id: str, values: dict, request_id: str = "", birthday_once: bool = False
    ) -> Member:
        """`values`: attribute -> new value, already validated by the api layer.
        `birthday_once`: the customer sets their birthday once (the birthday gift
        follows it); a set birthday is then only an operator's to correct."""

        async def once() -> Member:
            m = await self.active_member(member_id)
            if values.get("referrer_id") == member_id:
                raise failed_precondition(
                    "SELF_REFERRAL", "a member cannot refer themselves", domain=DOMAIN
                )
            if birthday_once and m.birthday and values.get("birthday", m.birthday) != m.birthday:
                raise failed_precondition(
                    "BIRTHDAY_ALREADY_SET",
                    "the birthday is set once; ask the brand's service to correct it",
                    domain=DOMAIN,
                )
            now = self.now()
            wanted = dict(values)
            if "consents" in wanted:
                # Per channel: the channels named get their decision, the others keep
                # theirs (two updates of different channels at once both hold). A
                # channel's time is when its decision was made (a merge keeps the
                # later decision): one sent again unchanged keeps its time.
                wanted["consents"] = {**m.consents, **{
                    ch: m.consents[ch] if m.consents.get(ch, (None,))[0] == granted
                    else (granted, at)
                    for ch, (granted, at) in wanted["consents"].items()
                }}
            changed = [k for k, v in wanted.items() if getattr(m, k) != v]
            for k, v in wanted.items():
                setattr(m, k, v)
            before = m.kind
            self.touch(m, now)
            if m.kind is not before:
                changed.append("kind")
            if not changed:
                return self.view(m)
            events = EventWriter(now, request_id)
            events.updated(m, changed)
            await self.commit(self.write(m, events))
            return self.view(m)

        return await self.retrying(member_id, once)

    async def set_paid_membership(
        self, member_id: str, until: datetime, call: IdempotentCall[R], request_id: str = ""
    ) -> R:
        """Renders the member (call.render) as of this call; a replay returns that."""

        async def attempt() -> tuple[MemberWrite, Member]:
            m = await self.active_member(member_id)
            now = self.now()
            if until <= now:
                raise failed_precondition(
                    "END_IN_PAST", "paid_until must be in the future", domain=DOMAIN
                )
            m.paid_until = until
            self.touch(m, now)
            events = EventWriter(now, request_id)
            events.updated(m, ["paid_until", "kind"])
            return self.write(m, events), self.view(m)

        return await self.idempotent(member_id, call, attempt)

    async def lapse_paid_memberships(self, batch: int = 500) -> int:
        """Stores the lapsed kind of paid memberships past their end (announced)."""
        lapsed = 0
        for member_id in await self.store.lapsed_paid_member_ids(self.now(), batch):

            async def once(member_id: str = member_id) -> None:
                m = await self.member(member_id)
                now = self.now()
                self.touch(m, now)
                events = EventWriter(now)
                events.updated(m, ["kind"])
                await self.commit(self.write(m, events))

            await self.retrying(member_id, once)
            lapsed += 1
        return lapsed
