"""The member store on MongoDB (motor): the production backend. Every motor and pymongo
call of the member service stays in this file; what every Mongo store shares (opening,
server detection, counters, the transaction wrapper, find_docs) is services.runtime.mongo.

Collections (created by open(), with every index a query needs, idempotently):
  members          codec.member_to_doc, `_id` = member id; the fields filters use
                   (store_id, guide_id, tier_level, kind, channel, paid_until) and the
                   version are top-level fields of that document
  identities       `_id` = lookup, member_id
  lots, points_entries, sv_entries, orders
                   codec documents, `_id` = their id (orders carry member_id, paid_at and
                   net_growth top-level)
  tier_changes     codec document, `_id` = its sequence number
  settings         the tier programme, `_id` = "tier_program"
  idempotency      `_id` = scope + "\\x1f" + key; scope, key, fingerprint, response bytes
  outbox           `_id` = sequence number, event bytes
  counters         `_id` = the sequence's name ("tier_changes", "outbox"), `n` = the last
                   number handed out

Atomicity. On a replica set or a mongos (production: ARCHITECTURE.md, "Storage and
messaging") each commit runs in one multi-document transaction, so a refused commit
writes nothing, as on SQLite; a write conflict with a concurrent transaction is reported
as StoreConflict (reload and retry). mongomock and a standalone mongod have no
transactions: there commit runs the same statements without a session, which is atomic
only as far as this ordering makes it:
  1. the member's version is checked (StoreConflict before anything is written);
  2. the writes that can be refused are made first: identities (IdentityTaken), a new
     order (DuplicateKey) or a replaced one, conditionally on its refunds
     (StoreConflict), and the idempotency record (DuplicateKey);
  3. then the member itself, conditionally on its version (a concurrent writer that got
     in since step 1 makes it StoreConflict, and the writes of step 2 are undone again,
     best effort: inserted documents deleted, a replaced order put back);
  4. then the writes that are not refused: lots, ledger entries, tier changes, the tier
     programme and the outbox events.
All-or-nothing commits are therefore real-MongoDB-only; the same order is used inside a
transaction, so both modes refuse a change with the same error as SQLite does.

Sequence numbers (tier changes, outbox) come from `counters` before the transaction,
so concurrent commits do not all conflict on one counter document. A refused commit
leaves a gap. Commits to one member still get increasing numbers: each reads the member
after the one before it committed. open() raises each counter to its collection's
highest id, so a database restored without `counters` carries on after what it holds
(for the outbox, after what is still unpublished: event ids, not outbox numbers, are
what consumers deduplicate on).
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError, PyMongoError

from services.member.domain.members import Member, MemberKind
from services.member.domain.orders import Order
from services.member.domain.points import Lot, PointsEntry
from services.member.domain.stored_value import StoredValueEntry
from services.member.domain.tiers import TierChange, TierProgram
from services.member.store import (
    Change,
    DuplicateKey,
    IdentityTaken,
    MemberFilter,
    MemberStore,
    StoreConflict,
    codec,
    expected_order_refunds,
)
from services.runtime.idempotency import IdempotencyRecord
from services.runtime.mongo import Counter, MongoSchema, MongoStore, find_docs

_COLLECTIONS = (
    "members",
    "identities",
    "lots",
    "points_entries",
    "sv_entries",
    "orders",
    "tier_changes",
    "settings",
    "idempotency",
    "outbox",
    "counters",
)
_OPEN = {"remaining": {"$gt": 0}}  # lots with points left

# collection -> [(keys, options)]
_INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict]]] = {
    "members": [
        ([("store_id", ASCENDING), ("_id", ASCENDING)], {}),
        ([("guide_id", ASCENDING), ("_id", ASCENDING)], {}),
        ([("kind", ASCENDING), ("paid_until", ASCENDING)], {}),
    ],
    "lots": [
        ([("member_id", ASCENDING)], {"name": "open_by_member", "partialFilterExpression": _OPEN}),
        ([("expires_at", ASCENDING)], {"name": "open_by_expiry", "partialFilterExpression": _OPEN}),
    ],
    "points_entries": [([("member_id", ASCENDING), ("_id", ASCENDING)], {})],
    "sv_entries": [
        ([("member_id", ASCENDING), ("_id", ASCENDING)], {}),
        ([("payment_entry_id", ASCENDING)], {}),
    ],
    "orders": [([("member_id", ASCENDING), ("paid_at", ASCENDING), ("_id", ASCENDING)], {})],
    "tier_changes": [([("member_id", ASCENDING), ("_id", ASCENDING)], {})],
}

_COUNTERS = {"tier_changes": Counter("tier_changes"), "outbox": Counter("outbox")}


def _idempotency_id(scope: str, key: str) -> str:
    return f"{scope}\x1f{key}"


class MongoMemberStore(MongoStore, MemberStore):
    """open(), close() and the collections (`self._c.<name>`) come from MongoStore."""

    SCHEMA = MongoSchema(_COLLECTIONS, _INDEXES, _COUNTERS, repair_counters=True)

    # -- writes --
    async def commit(self, change: Change) -> None:
        tier_seqs = await self._next_ids("tier_changes", len(change.tier_changes))
        outbox_seqs = await self._next_ids("outbox", len(change.events))

        async def apply(s) -> None:
            await self._apply(change, tier_seqs, outbox_seqs, s)

        # One attempt: a transient transaction error (a concurrent transaction wrote the
        # same documents) is StoreConflict, so the service layer reloads and retries.
        member_id = change.member.id if change.member else ""
        await self._atomically(apply, on_transient_error=lambda: StoreConflict(member_id))
        if change.member is not None:
            change.member.version = (change.expected_version or 0) + 1

    async def _apply(self, change: Change, tier_seqs: list[int], outbox_seqs: list[int], s) -> None:
        """The module docstring explains the order. `s` is the transaction's session, or
        None without transactions."""
        m = change.member
        if m is not None:
            found = await self._c.members.find_one({"_id": m.id}, {"version": 1}, session=s)
            if (None if found is None else found["version"]) != change.expected_version:
                raise StoreConflict(m.id)
        inserted: list[tuple[Any, str]] = []  # (collection, _id), undone on refusal
        replaced_order: dict | None = None  # the order as it was, put back on refusal
        try:
            for lookup, member_id in change.new_identities:
                try:
                    await self._c.identities.insert_one(
                        {"_id": lookup, "member_id": member_id}, session=s
                    )
                except DuplicateKeyError as exc:
                    # Outside the session: a refused write has aborted the transaction.
                    owner = await self._c.identities.find_one({"_id": lookup})
                    raise IdentityTaken(lookup, owner["member_id"] if owner else "") from exc
                inserted.append((self._c.identities, lookup))
            if change.order is not None and change.new_order:
                try:
                    await self._c.orders.insert_one(codec.order_to_doc(change.order), session=s)
                except DuplicateKeyError as exc:
                    raise DuplicateKey(change.order.id) from exc
                inserted.append((self._c.orders, change.order.id))
            elif change.order is not None:
                replaced_order = await self._c.orders.find_one_and_replace(
                    {"_id": change.order.id, "refunds": {"$size": expected_order_refunds(change)}},
                    codec.order_to_doc(change.order),
                    session=s,
                )
                if replaced_order is None:
                    raise StoreConflict(change.order.id)
            if change.idempotency is not None:
                rec = change.idempotency
                doc_id = _idempotency_id(rec.scope, rec.key)
                try:
                    await self._c.idempotency.insert_one(
                        {
                            "_id": doc_id,
                            "scope": rec.scope,
                            "key": rec.key,
                            "fingerprint": rec.fingerprint,
                            "response": rec.response,
                        },
                        session=s,
                    )
                except DuplicateKeyError as exc:
                    raise DuplicateKey(rec.key) from exc
                inserted.append((self._c.idempotency, doc_id))
            if m is not None:
                await self._write_member(m, change.expected_version, s)
        except Exception:
            if s is None:
                for collection, doc_id in reversed(inserted):
                    with contextlib.suppress(PyMongoError):
                        await collection.delete_one({"_id": doc_id})
                if replaced_order is not None and change.order is not None:
                    with contextlib.suppress(PyMongoError):
                        await self._c.orders.replace_one(
                            {
                                "_id": change.order.id,
                                "refunds": {"$size": len(change.order.refunds)},
                            },
                            replaced_order,
                        )
            raise
        for lot in change.lots:
            await self._c.lots.replace_one(
                {"_id": lot.id}, codec.lot_to_doc(lot), upsert=True, session=s
            )
        if change.points_entries:
            await self._c.points_entries.insert_many(
                [codec.points_entry_to_doc(e) for e in change.points_entries], session=s
            )
        if change.stored_value_entries:
            await self._c.sv_entries.insert_many(
                [codec.sv_entry_to_doc(e) for e in change.stored_value_entries], session=s
            )
        if change.tier_changes:
            await self._c.tier_changes.insert_many(
                [
                    {"_id": seq, **codec.tier_change_to_doc(c)}
                    for seq, c in zip(tier_seqs, change.tier_changes, strict=True)
                ],
                session=s,
            )
        if change.tier_program is not None:
            await self._c.settings.replace_one(
                {"_id": "tier_program"},
                codec.program_to_doc(change.tier_program),
                upsert=True,
                session=s,
            )
        if change.events:
            await self._c.outbox.insert_many(
                [
                    {"_id": seq, "event": raw}
                    for seq, raw in zip(outbox_seqs, change.events, strict=True)
                ],
                session=s,
            )

    async def _write_member(self, m: Member, expected_version: int | None, s) -> None:
        doc = codec.member_to_doc(m)
        doc["version"] = (expected_version or 0) + 1
        if expected_version is None:
            try:
                await self._c.members.insert_one(doc, session=s)
            except DuplicateKeyError as exc:
                raise StoreConflict(m.id) from exc
        else:
            result = await self._c.members.replace_one(
                {"_id": m.id, "version": expected_version}, doc, session=s
            )
            if result.matched_count != 1:
                raise StoreConflict(m.id)

    # -- reads --
    @staticmethod
    async def _sum(collection, match: dict, field: str) -> int:
        rows = await collection.aggregate(
            [
                {"$match": match},
                {"$group": {"_id": None, "total": {"$sum": f"${field}"}}},
            ]
        ).to_list(None)
        return int(rows[0]["total"]) if rows else 0

    async def get_member(self, member_id: str) -> Member | None:
        doc = await self._c.members.find_one({"_id": member_id})
        return codec.member_from_doc(doc) if doc else None

    async def member_id_for(self, lookup: str) -> str | None:
        doc = await self._c.identities.find_one({"_id": lookup})
        return doc["member_id"] if doc else None

    async def list_members(self, flt: MemberFilter, after_id: str, limit: int) -> list[Member]:
        query: dict = {"_id": {"$gt": after_id}}
        for name, value, unset in (
            ("store_id", flt.store_id, ""),
            ("guide_id", flt.guide_id, ""),
            ("tier_level", flt.tier_level, -1),
            ("kind", flt.kind, 0),
            ("channel", flt.channel, 0),
        ):
            if value != unset:
                query[name] = {"$eq": value}
        if flt.min_tier_level:
            query.setdefault("tier_level", {})["$gte"] = flt.min_tier_level
        docs = await find_docs(self._c.members, query, [("_id", ASCENDING)], limit)
        return [codec.member_from_doc(d) for d in docs]

    async def lapsed_paid_member_ids(self, now: datetime, limit: int) -> list[str]:
        docs = await find_docs(
            self._c.members,
            {"kind": MemberKind.PAID.value, "paid_until": {"$lte": codec.ts(now)}},
            [("paid_until", ASCENDING)],
            limit,
            {"_id": 1},
        )
        return [d["_id"] for d in docs]

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        doc = await self._c.idempotency.find_one({"_id": _idempotency_id(scope, key)})
        return (
            IdempotencyRecord(scope, key, doc["fingerprint"], bytes(doc["response"]))
            if doc
            else None
        )

    async def open_lots(self, member_id: str) -> list[Lot]:
        docs = await find_docs(
            self._c.lots, {"member_id": member_id, **_OPEN}, [("_id", ASCENDING)], -1
        )
        return [codec.lot_from_doc(d) for d in docs]

    async def get_points_entry(self, entry_id: str) -> PointsEntry | None:
        doc = await self._c.points_entries.find_one({"_id": entry_id})
        return codec.points_entry_from_doc(doc) if doc else None

    async def list_points_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[PointsEntry]:
        query: dict = {"member_id": member_id}
        if before_id:
            query["_id"] = {"$lt": before_id}
        docs = await find_docs(self._c.points_entries, query, [("_id", DESCENDING)], limit)
        return [codec.points_entry_from_doc(d) for d in docs]

    async def members_with_birthday(
        self, endings: tuple[str, ...], after_id: str, limit: int
    ) -> list[Member]:
        # A daily job: an anchored-at-the-end regex scans the members (no index fits).
        pattern = "(" + "|".join(re.escape(e) for e in endings) + ")$"
        docs = await find_docs(
            self._c.members,
            {"_id": {"$gt": after_id}, "birthday": {"$regex": pattern}},
            [("_id", ASCENDING)],
            limit,
        )
        return [codec.member_from_doc(d) for d in docs]

    async def members_with_due_lots(self, now: datetime, limit: int) -> list[str]:
        if limit == 0:
            return []
        pipeline: list[dict] = [
            {"$match": {**_OPEN, "expires_at": {"$lte": codec.ts(now)}}},
            {"$group": {"_id": "$member_id"}},
            {"$sort": {"_id": ASCENDING}},
        ]
        if limit > 0:
            pipeline.append({"$limit": limit})
        rows = await self._c.lots.aggregate(pipeline).to_list(None)
        return [r["_id"] for r in rows]

    def _expiring(self, start: datetime, end: datetime) -> dict:
        return {**_OPEN, "expires_at": {"$gt": codec.ts(start), "$lte": codec.ts(end)}}

    async def expiring_lots(
        self, member_id: str, start: datetime, end: datetime, after_id: str, limit: int
    ) -> list[Lot]:
        query = {**self._expiring(start, end), "_id": {"$gt": after_id}}
        if member_id:
            query["member_id"] = member_id
        docs = await find_docs(self._c.lots, query, [("_id", ASCENDING)], limit)
        return [codec.lot_from_doc(d) for d in docs]

    async def unannounced_lots(self, start: datetime, end: datetime, limit: int) -> list[Lot]:
        docs = await find_docs(
            self._c.lots,
            {**self._expiring(start, end), "announced": False},
            [("_id", ASCENDING)],
            limit,
        )
        return [codec.lot_from_doc(d) for d in docs]

    async def get_stored_value_entry(self, entry_id: str) -> StoredValueEntry | None:
        doc = await self._c.sv_entries.find_one({"_id": entry_id})
        return codec.sv_entry_from_doc(doc) if doc else None

    async def refunded_fen_for_payment(self, payment_entry_id: str) -> int:
        return await self._sum(
            self._c.sv_entries, {"payment_entry_id": payment_entry_id}, "delta_fen"
        )

    async def list_stored_value_entries(
        self, member_id: str, before_id: str, limit: int
    ) -> list[StoredValueEntry]:
        query: dict = {"member_id": member_id}
        if before_id:
            query["_id"] = {"$lt": before_id}
        docs = await find_docs(self._c.sv_entries, query, [("_id", DESCENDING)], limit)
        return [codec.sv_entry_from_doc(d) for d in docs]

    async def get_order(self, order_id: str) -> Order | None:
        doc = await self._c.orders.find_one({"_id": order_id})
        return codec.order_from_doc(doc) if doc else None

    async def list_orders(self, member_id: str, before_id: str, limit: int) -> list[Order]:
        query: dict = {"member_id": member_id}
        anchor = (
            await self._c.orders.find_one(
                {"_id": before_id, "member_id": member_id}, {"paid_at": 1}
            )
            if before_id
            else None
        )
        if anchor is not None:
            paid_at = anchor["paid_at"]
            query["$or"] = [
                {"paid_at": {"$lt": paid_at}},
                {"paid_at": paid_at, "_id": {"$lt": before_id}},
            ]
        docs = await find_docs(
            self._c.orders, query, [("paid_at", DESCENDING), ("_id", DESCENDING)], limit
        )
        return [codec.order_from_doc(d) for d in docs]

    async def growth_since(self, member_id: str, since: datetime) -> int:
        return await self._sum(
            self._c.orders,
            {"member_id": member_id, "paid_at": {"$gte": codec.ts(since)}},
            "net_growth",
        )

    async def get_tier_program(self) -> TierProgram | None:
        doc = await self._c.settings.find_one({"_id": "tier_program"})
        return codec.program_from_doc(doc) if doc else None

    async def list_tier_changes(
        self, member_id: str, before_seq: int, limit: int
    ) -> list[tuple[int, TierChange]]:
        query: dict = {"member_id": member_id}
        if before_seq:
            query["_id"] = {"$lt": before_seq}
        docs = await find_docs(self._c.tier_changes, query, [("_id", DESCENDING)], limit)
        return [(d["_id"], codec.tier_change_from_doc(d)) for d in docs]

    async def outbox_pending(self, limit: int) -> list[tuple[int, bytes]]:
        docs = await find_docs(self._c.outbox, {}, [("_id", ASCENDING)], limit)
        return [(d["_id"], bytes(d["event"])) for d in docs]

    async def outbox_mark_published(self, seqs: list[int]) -> None:
        if seqs:
            await self._c.outbox.delete_many({"_id": {"$in": list(seqs)}})
