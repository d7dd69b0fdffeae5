"""The member store: one interface, two backends (SQLite embedded, MongoDB in
production), held equal by tests/contract/test_member_store.py.

Every state change goes through `commit(Change)`: the member (guarded by its
version), new identities, lots, ledger entries, the order (a changed one guarded by
its refunds), tier changes, the idempotency record and the outbox events are written
all or nothing."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from services.member.domain.members import Member
from services.member.domain.orders import Order
from services.member.domain.points import Lot, PointsEntry
from services.member.domain.stored_value import StoredValueEntry
from services.member.domain.tiers import TierChange, TierProgram
from services.runtime.idempotency import IdempotencyRecord


class StoreConflict(Exception):
    """The member (version mismatch) or the order (refunds mismatch) changed since it
    was read: reload and retry."""


class IdentityTaken(Exception):
    def __init__(self, lookup: str, member_id: str) -> None:
        super().__init__(f"identity already belongs to member {member_id}")
        self.lookup = lookup
        self.member_id = member_id


class DuplicateKey(Exception):
    """The idempotency record or order id was written by a concurrent call."""


@dataclass
class Change:
    """One atomic unit of work."""

    member: Member | None = None
    # The version the member had when read; None inserts a new member.
    expected_version: int | None = None
    new_identities: list[tuple[str, str]] = field(default_factory=list)  # (lookup, member id)
    lots: list[Lot] = field(default_factory=list)  # inserted or replaced by id
    points_entries: list[PointsEntry] = field(default_factory=list)
    stored_value_entries: list[StoredValueEntry] = field(default_factory=list)
    order: Order | None = None  # inserted (new_order) or replaced by id
    new_order: bool = False
    # An order changes only by gaining refunds, so how many it had when read is its
    # version: a replaced order is written only if the stored one still has that many
    # (else StoreConflict), so two refunds that read the same order cannot both land.
    # Required when replacing an order.
    expected_order_refunds: int | None = None
    tier_changes: list[TierChange] = field(default_factory=list)
    tier_program: TierProgram | None = None
    idempotency: IdempotencyRecord | None = None
    events: list[bytes] = field(default_factory=list)


def expected_order_refunds(change: Change) -> int:
    """The guard of a replaced order (both backends refuse a change without one)."""
    if change.expected_order_refunds is None:
        raise ValueError("replacing an order needs expected_order_refunds")
    return change.expected_order_refunds


@dataclass(frozen=True)
class MemberFilter:
    store_id: str = ""
    guide_id: str = ""
    tier_level: int = -1  # -1: any
    min_tier_level: int = 0
    kind: int = 0  # 0: any
    channel: int = 0  # 0: any


class MemberStore(abc.ABC):
    # -- lifecycle --
    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- the one way to change state --
    @abc.abstractmethod
    async def commit(self, change: Change) -> None:
        """Raises StoreConflict, IdentityTaken or DuplicateKey; writes nothing then."""

    # -- members --
    @abc.abstractmethod
    async def get_member(self, member_id: str) -> Member | None: ...

    @abc.abstractmethod
    async def member_id_for(self, lookup: str) -> str | None: ...

    @abc.abstractmethod
    async def list_members(self, flt: MemberFilter, after_id: str, limit: int) -> list[Member]:
        """Members ordered by id, after `after_id` ("" from the start)."""

    @abc.abstractmethod
    async def lapsed_paid_member_ids(self, now: datetime, limit: int) -> list[str]:
        """Members stored as PAID whose paid_until has passed."""

    # -- idempotency --
    @abc.abstractmethod
    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    # -- points --
    @abc.abstractmethod
    async def open_lots(self, member_id: str) -> list[Lot]:
        """Lots with points remaining, any expiry."""

    @abc.abstractmethod
    async def get_points_entry(self, entry_id: str) -> PointsEntry | None: ...

    @abc.abstractmethod
    async def list_points_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[PointsEntry]:
        """Newest first, before `before_id` ("" from the newest)."""

    @abc.abstractmethod
    async def members_with_birthday(
        self, endings: tuple[str, ...], after_id: str, limit: int
    ) -> list[Member]:
        """Members whose YYYY-MM-DD birthday ends with one of `endings` ("-MM-DD"),
        by id, after `after_id`."""

    @abc.abstractmethod
    async def members_with_due_lots(self, now: datetime, limit: int) -> list[str]:
        """Members holding a lot with points left whose expiry is <= now."""

    @abc.abstractmethod
    async def expiring_lots(
        self, member_id: str, start: datetime, end: datetime, after_id: str, limit: int
    ) -> list[Lot]:
        """Lots with points left expiring in (start, end], ordered by lot id; one
        member or every member ("")."""

    @abc.abstractmethod
    async def unannounced_lots(self, start: datetime, end: datetime, limit: int) -> list[Lot]:
        """Lots with points left expiring in (start, end] not yet announced."""

    # -- stored value --
    @abc.abstractmethod
    async def get_stored_value_entry(self, entry_id: str) -> StoredValueEntry | None: ...

    @abc.abstractmethod
    async def refunded_fen_for_payment(self, payment_entry_id: str) -> int: ...

    @abc.abstractmethod
    async def list_stored_value_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[StoredValueEntry]: ...

    # -- orders --
    @abc.abstractmethod
    async def get_order(self, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    async def list_orders(self, member_id: str, before_id: str, limit: int) -> list[Order]:
        """Newest paid first; ties by id. `before_id` is the last order id seen."""

    @abc.abstractmethod
    async def growth_since(self, member_id: str, since: datetime) -> int:
        """Net growth (earned minus reversed) of orders paid at or after `since`."""

    # -- tiers --
    @abc.abstractmethod
    async def get_tier_program(self) -> TierProgram | None: ...

    @abc.abstractmethod
    async def list_tier_changes(
        self, member_id: str, before_seq: int, limit: int
    ) -> list[tuple[int, TierChange]]:
        """Newest first as (sequence, change); before_seq 0 from the newest."""

    # -- outbox (services.runtime.outbox.OutboxStore) --
    @abc.abstractmethod
    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]: ...

    @abc.abstractmethod
    async def outbox_mark_published(self, seqs: list[int]) -> None: ...


async def open_store(
    *, sqlite_path: str = "", mongodb_uri: str = "", mongodb_db: str = "pond", mongo_database=None
) -> MemberStore:
    """MongoDB when a URI (or a database object, for tests) is given, else SQLite."""
    if mongo_database is not None or mongodb_uri:
        from services.member.store.mongo import MongoMemberStore

        return await MongoMemberStore.open(
            uri=mongodb_uri, db_name=mongodb_db, database=mongo_database
        )
    from services.member.store.sqlite import SqliteMemberStore

    return await SqliteMemberStore.open(sqlite_path)
