"""Stored value (储值): top-ups (with an optional bonus), payments and refunds of
payments, each an entry in the member's own ledger. The balance never goes
negative and a payment can be refunded at most up to what it paid."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from services.member.domain.errors import RuleViolation

# One member's balance is capped: stored value is a liability the brand must honour.
MAX_BALANCE_FEN = 100_000_000


class StoredValueEntryKind(IntEnum):
    UNSPECIFIED = 0
    TOP_UP = 1
    PAY = 2
    REFUND = 3


@dataclass(frozen=True, slots=True)
class StoredValueEntry:
    id: str
    member_id: str
    kind: StoredValueEntryKind
    delta_fen: int
    bonus_fen: int
    balance_after_fen: int
    at: datetime
    reference: str = ""
    payment_entry_id: str = ""


def top_up(
    *,
    entry_id: str,
    member_id: str,
    balance: int,
    amount_fen: int,
    bonus_fen: int,
    now: datetime,
    reference: str,
) -> StoredValueEntry:
    delta = amount_fen + bonus_fen
    if balance + delta > MAX_BALANCE_FEN:
        raise RuleViolation("BALANCE_LIMIT", f"a balance may not exceed {MAX_BALANCE_FEN} fen")
    return StoredValueEntry(
        entry_id,
        member_id,
        StoredValueEntryKind.TOP_UP,
        delta,
        bonus_fen,
        balance + delta,
        now,
        reference,
    )


def pay(
    *, entry_id: str, member_id: str, balance: int, amount_fen: int, now: datetime, reference: str
) -> StoredValueEntry:
    if amount_fen > balance:
        raise RuleViolation(
            "INSUFFICIENT_BALANCE",
            f"the balance is {balance} fen, {amount_fen} fen needed",
            balance_fen=str(balance),
            needed_fen=str(amount_fen),
        )
    return StoredValueEntry(
        entry_id,
        member_id,
        StoredValueEntryKind.PAY,
        -amount_fen,
        0,
        balance - amount_fen,
        now,
        reference,
    )


def refund_payment(
    *,
    entry_id: str,
    member_id: str,
    balance: int,
    payment: StoredValueEntry,
    already_refunded_fen: int,
    amount_fen: int,
    now: datetime,
) -> StoredValueEntry:
    if payment.kind is not StoredValueEntryKind.PAY or payment.member_id != member_id:
        raise RuleViolation("NOT_A_PAYMENT", f"entry {payment.id} is not a payment of this member")
    refundable = -payment.delta_fen - already_refunded_fen
    if amount_fen > refundable:
        raise RuleViolation(
            "REFUND_EXCEEDS_PAYMENT",
            f"only {refundable} fen of payment {payment.id} is refundable",
            refundable_fen=str(refundable),
        )
    return StoredValueEntry(
        entry_id,
        member_id,
        StoredValueEntryKind.REFUND,
        amount_fen,
        0,
        balance + amount_fen,
        now,
        payment.reference,
        payment.id,
    )
