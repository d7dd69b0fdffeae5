"""The member service's collections and queries, written once against the runtime's
document store (services/runtime/documents.py; SQLite embedded, MongoDB in
production). No SQL and no motor here. tests/contract/test_member_store.py runs it
over both engines; documents.py maps the domain objects to documents.

Collections
  members         `_v` is Member.version: a member is replaced guarded by the version
                  it was read with, so concurrent writes to one member cannot both land
  identities      `_id` = the lookup key ("phone:<hash>", "unionid:<id>", ...),
                  member_id: unique by nature, so two registrations racing for one
                  identity cannot both commit (DuplicateKey on identities)
  lots            points lots; the open ones (points left) indexed by member, expiry
  points_entries, sv_entries    ledgers, by member, newest first by id
  orders          by member and paid time; `_v` is Order.version (guards its refunds)
  tier_changes    int keys from the sequence "tier_changes"
  settings        the tier programme
Every write is a MemberWrite (a runtime UnitOfWork in the member's terms) committed
all or nothing with its outbox events and idempotency record."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.member import documents as d
from services.member import legacy
from services.member.domain.members import Member, MemberKind
from services.member.domain.merging import MergedRows
from services.member.domain.orders import Order
from services.member.domain.points import Lot, PointsEntry
from services.member.domain.stored_value import StoredValueEntry
from services.member.domain.tiers import TierChange, TierProgram
from services.runtime.documents import (
    Collection,
    Doc,
    DocumentStore,
    Index,
    Schema,
    UnitOfWork,
    open_document_store,
)

OPEN = {"remaining": {"$gt": 0}}  # lots with points left
MEMBERS = Collection(
    "members",
    indexes=(
        Index(("store_id", "_id")),
        Index(("guide_id", "_id")),
        Index(("kind", "paid_until")),
    ),
    # birthday_md ("-MM-DD") only for the daily birthday job: a scan there is cheaper
    # than an index every member write would keep up.
    fields=("tier_level", "channel", "birthday_md", "merged_into"),
)
IDENTITIES = Collection("identities")
LOTS = Collection(
    "lots",
    indexes=(
        Index(("member_id",), partial=OPEN),
        Index(("expires_at", "_id"), partial=OPEN),
    ),
    fields=("remaining", "announced"),
)
POINTS_ENTRIES = Collection("points_entries", indexes=(Index(("member_id", "_id")),))
SV_ENTRIES = Collection(
    "sv_entries", indexes=(Index(("member_id", "_id")), Index(("payment_entry_id",)))
)
ORDERS = Collection("orders", indexes=(Index(("member_id", "paid_at", "_id")),))
TIER_CHANGES = Collection("tier_changes", indexes=(Index(("member_id", "_id")),), key_type=int)
SETTINGS = Collection("settings")
SCHEMA = Schema(
    "member",
    (MEMBERS, IDENTITIES, LOTS, POINTS_ENTRIES, SV_ENTRIES, ORDERS, TIER_CHANGES, SETTINGS),
    sequences=("tier_changes",),
)


@dataclass(frozen=True)
class MemberFilter:
    store_id: str = ""
    guide_id: str = ""
    tier_level: int = -1  # -1: any
    min_tier_level: int = 0
    kind: int = 0  # 0: any
    channel: int = 0  # 0: any


class MemberWrite(UnitOfWork):
    """One unit of work of the member service. Writes apply in the order added; add
    the refusable ones (identities, a new order, guarded replacements) first.
    MemberStore.commit numbers tier changes and, after the commit, sets the written
    members' and orders' versions to the stored ones."""

    def __init__(self) -> None:
        super().__init__()
        self.tier_changes: list[TierChange] = []
        self._versioned: list[tuple[Member | Order, Doc]] = []

    def save_member(self, m: Member) -> None:
        """Inserts a new member (version 0), else replaces it guarded by its version."""
        doc = d.member_to_doc(m)
        if m.version == 0:
            del doc["_v"]
            self.insert(MEMBERS.name, doc)
        else:
            self.replace(MEMBERS.name, doc)
        self._versioned.append((m, doc))

    def bind_identities(self, lookups: Iterable[str], member_id: str) -> None:
        for lookup in lookups:
            self.insert(IDENTITIES.name, {"_id": lookup, "member_id": member_id})

    def rebind_identities(self, lookups: Iterable[str], member_id: str) -> None:
        """Identities that change hands (a merge): unguarded, both members' versions
        in the same unit of work cover them."""
        for lookup in lookups:
            self.put(IDENTITIES.name, {"_id": lookup, "member_id": member_id})

    def release_identities(self, lookups: Iterable[str]) -> None:
        for lookup in lookups:
            self.delete(IDENTITIES.name, lookup)

    def move_ledger_entries(
        self, points: Iterable[PointsEntry], stored_value: Iterable[StoredValueEntry]
    ) -> None:
        """Entries re-owned by a merge, by id (the members' versions cover them)."""
        if docs := [d.points_entry_to_doc(e) for e in points]:
            self.put_many(POINTS_ENTRIES.name, docs)
        if docs := [d.sv_entry_to_doc(e) for e in stored_value]:
            self.put_many(SV_ENTRIES.name, docs)

    def save_lots(self, lots: Iterable[Lot]) -> None:
        """Inserted or replaced by id: the member's guarded version covers them."""
        docs = [d.lot_to_doc(lot) for lot in lots]
        if docs:
            self.put_many(LOTS.name, docs)

    def add_points_entries(self, entries: Iterable[PointsEntry]) -> None:
        for e in entries:
            self.insert(POINTS_ENTRIES.name, d.points_entry_to_doc(e))

    def add_sv_entries(self, entries: Iterable[StoredValueEntry]) -> None:
        for e in entries:
            self.insert(SV_ENTRIES.name, d.sv_entry_to_doc(e))

    def add_order(self, o: Order) -> None:
        """A new order: DuplicateKey on orders if its id is taken."""
        doc = d.order_to_doc(o)
        del doc["_v"]
        self.insert(ORDERS.name, doc)
        self._versioned.append((o, doc))

    def save_order(self, o: Order) -> None:
        """A changed order, guarded by the version it was read with (Conflict)."""
        doc = d.order_to_doc(o)
        self.replace(ORDERS.name, doc)
        self._versioned.append((o, doc))

    def add_tier_change(self, c: TierChange) -> None:
        self.tier_changes.append(c)

    def set_tier_program(self, p: TierProgram) -> None:
        self.put(SETTINGS.name, d.program_to_doc(p))


class MemberStore:
    """The member service's reads, and the commit of its writes."""

    # Members kept for read_member: enough for a brand's busy members; a table
    # that fills up is emptied (cheaper than ordering entries by use).
    READ_CACHE_LIMIT = 10_000

    def __init__(self, docs: DocumentStore) -> None:
        self.docs = docs
        self._read: dict[str, Member] = {}

    async def close(self) -> None:
        await self.docs.close()

    async def commit(self, w: MemberWrite) -> None:
        """All of `w` or nothing: Conflict, DuplicateKey (runtime.documents)."""
        if w.tier_changes:
            seqs = await self.docs.next_ids("tier_changes", len(w.tier_changes))
            for seq, c in zip(seqs, w.tier_changes, strict=True):
                w.insert(TIER_CHANGES.name, d.tier_change_to_doc(seq, c))
            w.tier_changes = []
        await self.docs.commit(w)
        for obj, doc in w._versioned:
            obj.version = doc["_v"]

    # -- members --
    async def get_member(self, member_id: str) -> Member | None:
        """The member, for a write: the caller's own object to change."""
        doc = await self.docs.get(MEMBERS.name, member_id)
        return d.member_from_doc(doc) if doc else None

    async def read_member(self, member_id: str) -> Member | None:
        """The member, for reading only: one shared object while the stored document
        keeps its version, so a read of an unchanged member skips building it again
        (and callers may keep what they derive from it, keyed by the object). The
        document is read every time: its version (1 at the insert, +1 per write;
        members are never deleted) says whether the object is still the stored one.
        Never change what this returns; writes load their own with get_member."""
        doc = await self.docs.get(MEMBERS.name, member_id)
        if doc is None:
            self._read.pop(member_id, None)
            return None
        m = self._read.get(member_id)
        if m is not None and m.version == doc["_v"]:
            return m
        if len(self._read) >= self.READ_CACHE_LIMIT:
            self._read.clear()
        m = self._read[member_id] = d.member_from_doc(doc)
        return m

    async def member_id_for(self, lookup: str) -> str | None:
        doc = await self.docs.get(IDENTITIES.name, lookup)
        return doc["member_id"] if doc else None

    async def list_members(self, flt: MemberFilter, after_id: str, limit: int) -> list[Member]:
        """Members ordered by id, after `after_id` ("" from the start); members merged
        into another are not members any more (GetMember still shows them)."""
        # None: documents written before merged_into was stored.
        where: dict = {"_id": {"$gt": after_id}, "merged_into": {"$in": ["", None]}}
        for name, value, unset in (
            ("store_id", flt.store_id, ""),
            ("guide_id", flt.guide_id, ""),
            ("tier_level", flt.tier_level, -1),
            ("kind", flt.kind, 0),
            ("channel", flt.channel, 0),
        ):
            if value != unset:
                where[name] = value
        if flt.min_tier_level:
            if flt.tier_level == -1:
                where["tier_level"] = {"$gte": flt.min_tier_level}
            elif flt.tier_level < flt.min_tier_level:
                return []
        if limit <= 0:
            return []
        docs = await self.docs.find(MEMBERS.name, where, limit=limit)
        return [d.member_from_doc(doc) for doc in docs]

    async def lapsed_paid_member_ids(self, now: datetime, limit: int) -> list[str]:
        """Members stored as PAID whose paid_until has passed."""
        where = {"kind": MemberKind.PAID.value, "paid_until": {"$lte": d.ts(now)}}
        docs = await self.docs.find(MEMBERS.name, where, order=("paid_until",), limit=limit)
        return [doc["_id"] for doc in docs]

    async def members_with_birthday(
        self, endings: tuple[str, ...], after_id: str, limit: int
    ) -> list[Member]:
        """Members whose YYYY-MM-DD birthday ends with one of `endings` ("-MM-DD"),
        by id, after `after_id`."""
        where = {"birthday_md": {"$in": list(endings)}, "_id": {"$gt": after_id}}
        docs = await self.docs.find(MEMBERS.name, where, limit=limit)
        return [d.member_from_doc(doc) for doc in docs]

    # -- points --
    async def open_lots(self, member_id: str) -> list[Lot]:
        """Lots with points remaining, any expiry."""
        docs = await self.docs.find(LOTS.name, {"member_id": member_id, **OPEN})
        return [d.lot_from_doc(doc) for doc in docs]

    async def get_points_entry(self, entry_id: str) -> PointsEntry | None:
        doc = await self.docs.get(POINTS_ENTRIES.name, entry_id)
        return d.points_entry_from_doc(doc) if doc else None

    async def list_points_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[PointsEntry]:
        """Newest first, before `before_id` ("" from the newest)."""
        docs = await self._newest(POINTS_ENTRIES, member_id, before_id, limit)
        return [d.points_entry_from_doc(doc) for doc in docs]

    async def members_with_due_lots(self, now: datetime, limit: int) -> list[str]:
        """Members holding a lot with points left whose expiry is <= now."""
        found: dict[str, None] = {}
        where = {**OPEN, "expires_at": {"$lte": d.ts(now)}}
        async for batch in self.docs.scan(LOTS.name, where, fields=("member_id",)):
            for doc in batch:
                found[doc["member_id"]] = None
                if len(found) >= limit:
                    return list(found)
        return list(found)

    async def expiring_lots(
        self, member_id: str, start: datetime, end: datetime, after_id: str, limit: int
    ) -> list[Lot]:
        """Lots with points left expiring in (start, end], ordered by lot id; one
        member or every member ("")."""
        where = {**self._expiring(start, end), "_id": {"$gt": after_id}}
        if member_id:
            where["member_id"] = member_id
        docs = await self.docs.find(LOTS.name, where, limit=limit)
        return [d.lot_from_doc(doc) for doc in docs]

    async def unannounced_lots(self, start: datetime, end: datetime, limit: int) -> list[Lot]:
        """Lots with points left expiring in (start, end] not yet announced."""
        where = {**self._expiring(start, end), "announced": False}
        docs = await self.docs.find(LOTS.name, where, limit=limit)
        return [d.lot_from_doc(doc) for doc in docs]

    @staticmethod
    def _expiring(start: datetime, end: datetime) -> dict:
        return {**OPEN, "expires_at": {"$gt": d.ts(start), "$lte": d.ts(end)}}

    # -- stored value --
    async def get_stored_value_entry(self, entry_id: str) -> StoredValueEntry | None:
        doc = await self.docs.get(SV_ENTRIES.name, entry_id)
        return d.sv_entry_from_doc(doc) if doc else None

    async def refunded_fen_for_payment(self, payment_entry_id: str) -> int:
        refunds = await self.docs.find(SV_ENTRIES.name, {"payment_entry_id": payment_entry_id})
        return sum(doc["delta_fen"] for doc in refunds)

    async def list_stored_value_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[StoredValueEntry]:
        docs = await self._newest(SV_ENTRIES, member_id, before_id, limit)
        return [d.sv_entry_from_doc(doc) for doc in docs]

    async def _newest(
        self, collection: Collection, member_id: str, before_id: str, limit: int
    ) -> list[Doc]:
        where: dict = {"member_id": member_id}
        if before_id:
            where["_id"] = {"$lt": before_id}
        return await self.docs.find(collection.name, where, order=("-_id",), limit=limit)

    # -- orders --
    async def get_order(self, order_id: str) -> Order | None:
        doc = await self.docs.get(ORDERS.name, order_id)
        return d.order_from_doc(doc) if doc else None

    async def list_orders(self, member_id: str, before_id: str, limit: int) -> list[Order]:
        """Newest paid first; ties by id, descending. `before_id` is the last order id
        seen (one that is not this member's starts over)."""
        newest = ("-paid_at", "-_id")
        anchor = await self.docs.get(ORDERS.name, before_id) if before_id else None
        if anchor is None or anchor["member_id"] != member_id:
            docs = await self.docs.find(ORDERS.name, {"member_id": member_id}, order=newest,
                                        limit=limit)
        else:
            # (paid_at, _id) < the anchor's: its ties first, then the earlier orders.
            paid_at = anchor["paid_at"]
            docs = await self.docs.find(
                ORDERS.name,
                {"member_id": member_id, "paid_at": paid_at, "_id": {"$lt": before_id}},
                order=newest,
                limit=limit,
            )
            if len(docs) < limit:
                docs += await self.docs.find(
                    ORDERS.name,
                    {"member_id": member_id, "paid_at": {"$lt": paid_at}},
                    order=newest,
                    limit=limit - len(docs),
                )
        return [d.order_from_doc(doc) for doc in docs]

    async def rows_of(self, member_id: str, window_start: datetime) -> MergedRows:
        """What a merge moves from `member_id`: its open lots, ledger entries and
        orders, and the net growth of its orders paid since `window_start`."""
        where = {"member_id": member_id}
        points, stored, orders = [], [], []
        async for batch in self.docs.scan(POINTS_ENTRIES.name, where):
            points += [d.points_entry_from_doc(doc) for doc in batch]
        async for batch in self.docs.scan(SV_ENTRIES.name, where):
            stored += [d.sv_entry_from_doc(doc) for doc in batch]
        async for batch in self.docs.scan(ORDERS.name, where):
            orders += [d.order_from_doc(doc) for doc in batch]
        growth = sum(
            o.growth_earned - o.growth_reversed for o in orders if o.paid_at >= window_start
        )
        lots = await self.open_lots(member_id)
        return MergedRows(tuple(lots), tuple(points), tuple(stored), tuple(orders), growth)

    async def growth_since(self, member_id: str, since: datetime) -> int:
        """Net growth (earned minus reversed) of orders paid at or after `since`."""
        where = {"member_id": member_id, "paid_at": {"$gte": d.ts(since)}}
        total = 0
        async for batch in self.docs.scan(ORDERS.name, where, fields=("net_growth",)):
            total += sum(doc["net_growth"] for doc in batch)
        return total

    # -- tiers --
    async def get_tier_program(self) -> TierProgram | None:
        doc = await self.docs.get(SETTINGS.name, d.TIER_PROGRAM)
        return d.program_from_doc(doc) if doc else None

    async def list_tier_changes(
        self, member_id: str, before_seq: int, limit: int
    ) -> list[tuple[int, TierChange]]:
        """Newest first as (sequence, change); before_seq 0 from the newest."""
        where: dict = {"member_id": member_id}
        if before_seq:
            where["_id"] = {"$lt": before_seq}
        docs = await self.docs.find(TIER_CHANGES.name, where, order=("-_id",), limit=limit)
        return [(doc["_id"], d.tier_change_from_doc(doc)) for doc in docs]


async def open_store(
    *, sqlite_path: str = "", mongodb_uri: str = "", mongodb_db: str = "pond", mongo_database=None
) -> MemberStore:
    """MongoDB when a URI (or a database object, for tests) is given, else SQLite (a
    file from before the document store is copied into the new layout, once)."""
    aside = legacy.set_aside_if_legacy(sqlite_path) if sqlite_path and not (
        mongodb_uri or mongo_database is not None) else None
    docs = await open_document_store(
        SCHEMA,
        sqlite_path=sqlite_path,
        mongodb_uri=mongodb_uri,
        mongodb_db=mongodb_db,
        mongo_database=mongo_database,
    )
    if aside is not None:
        try:
            await legacy.copy_legacy(docs, aside)
        except BaseException:
            await docs.close()
            raise
    return MemberStore(docs)
