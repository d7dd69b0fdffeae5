"""The member service's domain objects <-> documents of the runtime document store
(services/member/store.py declares the collections). Times are integer microseconds
since the epoch (UTC), sortable and queryable the same way on both engines. A
document's version is the store's `_v`: a member's and an order's is carried on the
domain object, so the write guarded by it can be built from the object alone."""

from __future__ import annotations

from datetime import datetime
from typing import overload

from services.member.domain.members import Gender, Identity, IdentityKind, Member, MemberKind
from services.member.domain.orders import Order, OrderItem, Refund
from services.member.domain.points import Lot, PointsEntry, PointsEntryKind
from services.member.domain.stored_value import StoredValueEntry, StoredValueEntryKind
from services.member.domain.tiers import Tier, TierChange, TierProgram
from services.runtime.clock import epoch_micros, from_epoch_micros

# Enum members by value: a dict look-up, not the Enum call (a member is read on
# every GetMember and RecordOrder); an unknown value still fails (KeyError).
_IDENTITY_KINDS = {k.value: k for k in IdentityKind}
_GENDERS = {g.value: g for g in Gender}
_MEMBER_KINDS = {k.value: k for k in MemberKind}


def ts(when: datetime | None) -> int | None:
    return None if when is None else epoch_micros(when)


@overload
def dt(micros: int) -> datetime: ...
@overload
def dt(micros: int | None) -> datetime | None: ...
def dt(micros: int | None) -> datetime | None:
    return None if micros is None else from_epoch_micros(micros)


def member_to_doc(m: Member) -> dict:
    return {
        "_id": m.id,
        "identities": [[i.kind.value, i.lookup, i.value, i.app_id] for i in m.identities],
        "created_at": ts(m.created_at),
        "updated_at": ts(m.updated_at),
        "name": m.name,
        "nickname": m.nickname,
        "gender": m.gender.value,
        "birthday": m.birthday,
        "city": m.city,
        "store_id": m.store_id,
        "guide_id": m.guide_id,
        "channel": m.channel,
        "referrer_id": m.referrer_id,
        "consents": [[ch, granted, ts(at)] for ch, (granted, at) in sorted(m.consents.items())],
        "co_branded": m.co_branded,
        "paid_until": ts(m.paid_until),
        "stored_value_opened": m.stored_value_opened,
        "kind": m.kind.value,
        "tier_level": m.tier_level,
        "tier_since": ts(m.tier_since),
        "growth_value": m.growth_value,
        "points_balance": m.points_balance,
        "stored_value_fen": m.stored_value_fen,
        "paid_order_count": m.paid_order_count,
        "total_spent_fen": m.total_spent_fen,
        "first_paid_at": ts(m.first_paid_at),
        "last_paid_at": ts(m.last_paid_at),
        # The "-MM-DD" ending, indexed: the daily birthday job looks members up by it
        # (a merged member's birthday is celebrated on its survivor only).
        "birthday_md": "" if m.merged_into else m.birthday[4:],
        "merged_into": m.merged_into,
        "absorbed": list(m.absorbed),
        "_v": m.version,
    }


def member_from_doc(d: dict) -> Member:
    return Member(
        id=d["_id"],
        identities=[Identity(_IDENTITY_KINDS[k], lk, v, a) for k, lk, v, a in d["identities"]],
        created_at=dt(d["created_at"]),
        updated_at=dt(d["updated_at"]),
        name=d["name"],
        # Documents written before nicknames and merges have neither.
        nickname=d.get("nickname", ""),
        gender=_GENDERS[d["gender"]],
        birthday=d["birthday"],
        city=d["city"],
        store_id=d["store_id"],
        guide_id=d["guide_id"],
        channel=d["channel"],
        referrer_id=d["referrer_id"],
        consents={ch: (granted, dt(at)) for ch, granted, at in d["consents"]},
        co_branded=d["co_branded"],
        paid_until=dt(d["paid_until"]),
        stored_value_opened=d["stored_value_opened"],
        kind=_MEMBER_KINDS[d["kind"]],
        tier_level=d["tier_level"],
        tier_since=dt(d["tier_since"]),
        growth_value=d["growth_value"],
        points_balance=d["points_balance"],
        stored_value_fen=d["stored_value_fen"],
        paid_order_count=d["paid_order_count"],
        total_spent_fen=d["total_spent_fen"],
        first_paid_at=dt(d["first_paid_at"]),
        last_paid_at=dt(d["last_paid_at"]),
        merged_into=d.get("merged_into", ""),
        absorbed=list(d.get("absorbed", ())),
        version=d["_v"],
    )


def lot_to_doc(lot: Lot) -> dict:
    return {
        "_id": lot.id,
        "member_id": lot.member_id,
        "earned_at": ts(lot.earned_at),
        "expires_at": ts(lot.expires_at),
        "amount": lot.amount,
        "remaining": lot.remaining,
        "order_id": lot.order_id,
        "announced": lot.announced,
    }


def lot_from_doc(d: dict) -> Lot:
    return Lot(
        d["_id"],
        d["member_id"],
        dt(d["earned_at"]),
        dt(d["expires_at"]),
        d["amount"],
        d["remaining"],
        d["order_id"],
        bool(d["announced"]),
    )


def points_entry_to_doc(e: PointsEntry) -> dict:
    return {
        "_id": e.id,
        "member_id": e.member_id,
        "kind": e.kind.value,
        "delta": e.delta,
        "balance_after": e.balance_after,
        "at": ts(e.at),
        "reason": e.reason,
        "order_id": e.order_id,
        "expires_at": ts(e.expires_at),
        "taken": [list(t) for t in e.taken],
    }


def points_entry_from_doc(d: dict) -> PointsEntry:
    return PointsEntry(
        d["_id"],
        d["member_id"],
        PointsEntryKind(d["kind"]),
        d["delta"],
        d["balance_after"],
        dt(d["at"]),
        d["reason"],
        d["order_id"],
        dt(d["expires_at"]),
        tuple((lot, n) for lot, n in d["taken"]),
    )


def sv_entry_to_doc(e: StoredValueEntry) -> dict:
    return {
        "_id": e.id,
        "member_id": e.member_id,
        "kind": e.kind.value,
        "delta_fen": e.delta_fen,
        "bonus_fen": e.bonus_fen,
        "balance_after_fen": e.balance_after_fen,
        "at": ts(e.at),
        "reference": e.reference,
        "payment_entry_id": e.payment_entry_id,
    }


def sv_entry_from_doc(d: dict) -> StoredValueEntry:
    return StoredValueEntry(
        d["_id"],
        d["member_id"],
        StoredValueEntryKind(d["kind"]),
        d["delta_fen"],
        d["bonus_fen"],
        d["balance_after_fen"],
        dt(d["at"]),
        d["reference"],
        d["payment_entry_id"],
    )


def order_to_doc(o: Order) -> dict:
    return {
        "_id": o.id,
        "member_id": o.member_id,
        "channel": o.channel,
        "store_id": o.store_id,
        "guide_id": o.guide_id,
        "items": [[i.sku, i.category, i.quantity, i.unit_price_fen] for i in o.items],
        "amount_fen": o.amount_fen,
        "paid_at": ts(o.paid_at),
        "points_earned": o.points_earned,
        "growth_earned": o.growth_earned,
        "fingerprint": o.fingerprint,
        "refunds": [[r.refund_id, r.fen, r.points, r.growth, ts(r.at)] for r in o.refunds],
        # Denormalised so growth_since reads one field per order.
        "net_growth": o.growth_earned - o.growth_reversed,
        "_v": o.version,
    }


def order_from_doc(d: dict) -> Order:
    return Order(
        d["_id"],
        d["member_id"],
        d["channel"],
        d["store_id"],
        d["guide_id"],
        tuple(OrderItem(*i) for i in d["items"]),
        d["amount_fen"],
        dt(d["paid_at"]),
        d["points_earned"],
        d["growth_earned"],
        d["fingerprint"],
        [Refund(rid, fen, pts, gr, dt(at)) for rid, fen, pts, gr, at in d["refunds"]],
        d["_v"],
    )


TIER_PROGRAM = "tier_program"  # its key in `settings`


def program_to_doc(p: TierProgram) -> dict:
    return {
        "_id": TIER_PROGRAM,
        "tiers": [
            [
                t.level,
                t.name,
                t.growth_threshold,
                t.points_multiplier_permille,
                t.birthday_gift_points,
                dict(t.benefits),
            ]
            for t in p.tiers
        ],
        "evaluation_window_days": p.evaluation_window_days,
        "retention_days": p.retention_days,
        "updated_at": ts(p.updated_at),
    }


def program_from_doc(d: dict) -> TierProgram:
    return TierProgram(
        tuple(Tier(*t) for t in d["tiers"]),
        d["evaluation_window_days"],
        d["retention_days"],
        dt(d["updated_at"]),
    )


def tier_change_to_doc(seq: int, c: TierChange) -> dict:
    return {
        "_id": seq,
        "member_id": c.member_id,
        "from_level": c.from_level,
        "to_level": c.to_level,
        "reason": c.reason,
        "at": ts(c.at),
    }


def tier_change_from_doc(d: dict) -> TierChange:
    return TierChange(d["member_id"], d["from_level"], d["to_level"], d["reason"], dt(d["at"]))
