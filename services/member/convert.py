"""Domain objects -> pond.member.v1 messages. Phones are shown masked unless the
caller's role may see them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from pond.member.v1 import member_pb2 as pb

from services.member.domain.members import IdentityKind, Member
from services.member.domain.orders import Order
from services.member.domain.points import Lot, PointsEntry
from services.member.domain.stored_value import StoredValueEntry
from services.member.domain.tiers import Tier, TierChange, TierProgram
from services.runtime.clock import set_timestamp, timestamp_pb
from services.runtime.redaction import mask_phone


def timestamp(when: datetime | None) -> Timestamp | None:
    return None if when is None else timestamp_pb(when)


def member_pb(m: Member, program: TierProgram, reveal: Callable, show_phone: bool) -> pb.Member:
    # Built in place (repeated fields with add(), times written into their fields)
    # rather than from sub-messages copied in by the constructor: 40% cheaper, and a
    # member is converted on every RecordOrder and every GetMember of a changed member.
    out = pb.Member(
        id=m.id,
        profile=pb.Profile(
            name=m.name,
            gender=m.gender,
            birthday=m.birthday,
            city=m.city,
            nickname=m.nickname,
        ),
        store_id=m.store_id,
        guide_id=m.guide_id,
        acquisition_channel=m.channel,
        referrer_id=m.referrer_id,
        kind=m.kind,
        co_branded=m.co_branded,
        tier_level=m.tier_level,
        tier_name=program.tier(m.tier_level).name,
        growth_value=m.growth_value,
        points_balance=m.points_balance,
        stored_value_fen=m.stored_value_fen,
        paid_order_count=m.paid_order_count,
        total_spent_fen=m.total_spent_fen,
        merged_into=m.merged_into,
    )
    add_identity = out.identities.add
    for ident in m.identities:
        value = reveal(ident)
        if ident.kind is IdentityKind.PHONE and not show_phone:
            value = mask_phone(value)
        add_identity(kind=ident.kind, value=value, app_id=ident.app_id)
    add_consent = out.consents.add
    for ch, (granted, at) in sorted(m.consents.items()):
        consent = add_consent(channel=ch, granted=granted)
        if at is not None:
            set_timestamp(consent.updated_at, at)
    for name, when in (
        ("paid_until", m.paid_until),
        ("first_paid_at", m.first_paid_at),
        ("last_paid_at", m.last_paid_at),
        ("create_time", m.created_at),
        ("update_time", m.updated_at),
    ):
        if when is not None:
            set_timestamp(getattr(out, name), when)
    return out


class ShownMembers:
    """Members as GetMember and FindMember answer them, kept per (member id, phones
    shown or masked) and answered again while the member object and the tier
    programme object are the ones they were made from: MemberStore.read_member hands
    out one object per stored version of a member (a write makes a new one) and the
    programme keeps its object while unchanged, so an unchanged member read again is
    not converted again (nor its phone decrypted). The messages are shared between
    calls: never change one."""

    LIMIT = 10_000  # entries; a full table is emptied

    def __init__(self, reveal: Callable) -> None:
        self._reveal = reveal
        self._kept: dict[tuple[str, bool], tuple[Member, TierProgram, pb.Member]] = {}

    def get(self, m: Member, program: TierProgram, show_phone: bool) -> pb.Member:
        key = (m.id, show_phone)
        hit = self._kept.get(key)
        if hit is not None and hit[0] is m and hit[1] is program:
            return hit[2]
        shown = member_pb(m, program, self._reveal, show_phone)
        if len(self._kept) >= self.LIMIT:
            self._kept.clear()
        self._kept[key] = (m, program, shown)
        return shown


def kept_member_pb(m: Member, program: TierProgram) -> pb.Member:
    """The member as an idempotent call's stored response keeps it: phones as the
    store holds them (encrypted), so no record holds one in clear and each caller,
    first or replaying, is shown what they may see (show_phones)."""
    return member_pb(m, program, lambda ident: ident.value, True)


def recorded_order_pb(result: tuple, program: TierProgram) -> pb.RecordOrderResponse:
    """RecordOrder's response, kept: `result` is (order, member, replayed)."""
    order, member, replayed = result
    return pb.RecordOrderResponse(
        order=order_pb(order), member=kept_member_pb(member, program), replayed=replayed
    )


def refunded_order_pb(result: tuple, program: TierProgram) -> pb.RefundOrderResponse:
    """RefundOrder's response, kept: `result` is (order, member, points, growth)."""
    order, member, points, growth = result
    return pb.RefundOrderResponse(
        order=order_pb(order),
        member=kept_member_pb(member, program),
        points_reversed=points,
        growth_reversed=growth,
    )


def show_phones(member: pb.Member, decrypt: Callable[[str], str], show_phone: bool) -> None:
    """Decrypts a kept member's phones in place, masked unless the caller sees phones."""
    for ident in member.identities:
        if ident.kind == IdentityKind.PHONE.value:
            phone = decrypt(ident.value)
            ident.value = phone if show_phone else mask_phone(phone)


def program_pb(p: TierProgram) -> pb.TierProgram:
    return pb.TierProgram(
        tiers=[
            pb.Tier(
                level=t.level,
                name=t.name,
                growth_threshold=t.growth_threshold,
                points_multiplier_permille=t.points_multiplier_permille,
                birthday_gift_points=t.birthday_gift_points,
                benefits=t.benefits,
            )
            for t in p.tiers
        ],
        evaluation_window_days=p.evaluation_window_days,
        retention_days=p.retention_days,
        update_time=timestamp(p.updated_at),
    )


def program_from_pb(p: pb.TierProgram) -> TierProgram:
    return TierProgram(
        tuple(
            Tier(
                t.level,
                t.name,
                t.growth_threshold,
                t.points_multiplier_permille,
                t.birthday_gift_points,
                dict(t.benefits),
            )
            for t in p.tiers
        ),
        p.evaluation_window_days,
        p.retention_days,
    )


def tier_change_pb(c: TierChange) -> pb.TierChange:
    return pb.TierChange(
        member_id=c.member_id,
        from_level=c.from_level,
        to_level=c.to_level,
        reason=c.reason,
        change_time=timestamp(c.at),
    )


def points_entry_pb(e: PointsEntry) -> pb.PointsEntry:
    return pb.PointsEntry(
        id=e.id,
        member_id=e.member_id,
        kind=e.kind.value,
        delta=e.delta,
        balance_after=e.balance_after,
        reason=e.reason,
        order_id=e.order_id,
        create_time=timestamp(e.at),
        expire_time=timestamp(e.expires_at),
    )


def expiring_pb(lot: Lot) -> pb.ExpiringPoints:
    return pb.ExpiringPoints(
        member_id=lot.member_id, points=lot.remaining, expire_time=timestamp(lot.expires_at)
    )


def sv_entry_pb(e: StoredValueEntry) -> pb.StoredValueEntry:
    return pb.StoredValueEntry(
        id=e.id,
        member_id=e.member_id,
        kind=e.kind.value,
        delta_fen=e.delta_fen,
        bonus_fen=e.bonus_fen,
        balance_after_fen=e.balance_after_fen,
        reference=e.reference,
        payment_entry_id=e.payment_entry_id,
        create_time=timestamp(e.at),
    )


def order_pb(o: Order) -> pb.Order:
    return pb.Order(
        id=o.id,
        member_id=o.member_id,
        channel=o.channel,
        store_id=o.store_id,
        guide_id=o.guide_id,
        items=[
            pb.OrderItem(
                sku=i.sku, category=i.category, quantity=i.quantity, unit_price_fen=i.unit_price_fen
            )
            for i in o.items
        ],
        amount_fen=o.amount_fen,
        paid_time=timestamp(o.paid_at),
        points_earned=o.points_earned,
        growth_earned=o.growth_earned,
        refunded_fen=o.refunded_fen,
        points_reversed=o.points_reversed,
        growth_reversed=o.growth_reversed,
    )
