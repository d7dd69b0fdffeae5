"""Protos from the member and community services -> the gateway's response bodies
(models.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, get_args

from google.protobuf.timestamp_pb2 import Timestamp
from pond.common.v1 import common_pb2
from pond.community.v1 import community_pb2 as cpb
from pond.member.v1 import member_pb2 as pb

from gateway.models import (
    CONTACT_CHANNELS,
    ChainEntryView,
    ChainView,
    CheckInStreakView,
    CheckInView,
    ConsentView,
    GroupKindWord,
    GroupLevelWord,
    GroupView,
    MeView,
    MyGroupView,
    NextTier,
    OrderItemView,
    OrderView,
    PointsEntryView,
    StoredValueEntryView,
    TierProgramView,
    TierStatus,
    TierView,
)
from services.runtime.redaction import mask_phone

_GENDERS = {pb.GENDER_MALE: "male", pb.GENDER_FEMALE: "female", pb.GENDER_OTHER: "other"}


def enum_word(enum: Any, value: int, prefix: str) -> str:
    """CHANNEL_STORE_POS -> store_pos."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return "unspecified"


def contact_channel_number(word: str) -> int:
    return int(common_pb2.ContactChannel.Value("CONTACT_CHANNEL_" + word.upper()))


def time_of(ts: Timestamp) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def tier_program(program: pb.TierProgram) -> TierProgramView:
    return TierProgramView(
        tiers=[TierView(level=t.level, name=t.name, growth_threshold=t.growth_threshold,
                        points_multiplier_permille=t.points_multiplier_permille,
                        birthday_gift_points=t.birthday_gift_points, benefits=dict(t.benefits))
               for t in sorted(program.tiers, key=lambda t: t.level)],
        evaluation_window_days=program.evaluation_window_days,
        retention_days=program.retention_days,
    )


def tier_status(member: pb.Member, program: pb.TierProgram) -> TierStatus:
    """The member's tier, its benefits and what the next tier needs. Qualifying growth
    is the member's growth value (the service's tier evaluation counts the window)."""
    tiers = sorted(program.tiers, key=lambda t: t.level)
    current = next((t for t in tiers if t.level == member.tier_level), None)
    above = next((t for t in tiers if t.level > member.tier_level), None)
    return TierStatus(
        level=member.tier_level,
        name=member.tier_name or (current.name if current else ""),
        points_multiplier_permille=current.points_multiplier_permille if current else 1000,
        benefits=dict(current.benefits) if current else {},
        growth_value=member.growth_value,
        next_tier=None if above is None else NextTier(
            level=above.level, name=above.name, growth_threshold=above.growth_threshold,
            growth_needed=max(0, above.growth_threshold - member.growth_value),
        ),
    )


def me(member: pb.Member, program: pb.TierProgram) -> MeView:
    phone = next((i.value for i in member.identities if i.kind == pb.IDENTITY_KIND_PHONE), "")
    profile = member.profile
    consents = [
        ConsentView(channel=word, granted=c.granted, updated_at=time_of(c.updated_at))
        for c in member.consents
        if (word := enum_word(common_pb2.ContactChannel, c.channel, "CONTACT_CHANNEL_"))
        in CONTACT_CHANNELS
    ]
    return MeView(
        id=member.id,
        nickname=getattr(profile, "nickname", ""),
        name=profile.name,
        gender=_GENDERS.get(profile.gender, "unspecified"),
        birthday=date.fromisoformat(profile.birthday) if profile.birthday else None,
        city=profile.city,
        phone=mask_phone(phone) if phone else None,
        tier=tier_status(member, program),
        points_balance=member.points_balance,
        stored_value_fen=member.stored_value_fen,
        store_id=member.store_id,
        guide_id=member.guide_id,
        consents=consents,
        paid_order_count=member.paid_order_count,
        member_since=time_of(member.create_time),
    )


def points_entry(e: pb.PointsEntry) -> PointsEntryView:
    return PointsEntryView(
        id=e.id, kind=enum_word(pb.PointsEntryKind, e.kind, "POINTS_ENTRY_KIND_"),
        delta=e.delta, balance_after=e.balance_after, reason=e.reason, order_id=e.order_id,
        created_at=time_of(e.create_time), expires_at=time_of(e.expire_time),
    )


def stored_value_entry(e: pb.StoredValueEntry) -> StoredValueEntryView:
    return StoredValueEntryView(
        id=e.id,
        kind=enum_word(pb.StoredValueEntryKind, e.kind, "STORED_VALUE_ENTRY_KIND_"),
        delta_fen=e.delta_fen, bonus_fen=e.bonus_fen, balance_after_fen=e.balance_after_fen,
        reference=e.reference, created_at=time_of(e.create_time),
    )


def order(o: pb.Order) -> OrderView:
    return OrderView(
        id=o.id, channel=enum_word(common_pb2.Channel, o.channel, "CHANNEL_"),
        store_id=o.store_id,
        items=[OrderItemView(sku=i.sku, category=i.category, quantity=i.quantity,
                             unit_price_fen=i.unit_price_fen) for i in o.items],
        amount_fen=o.amount_fen, paid_at=time_of(o.paid_time), points_earned=o.points_earned,
        growth_earned=o.growth_earned, refunded_fen=o.refunded_fen,
    )


# -- community --
def _word(enum: Any, value: int, prefix: str, allowed: Any) -> Any:
    """The enum's word when the document lists it, else "unspecified" (a value added
    to the proto later must not break the answer)."""
    word = enum_word(enum, value, prefix)
    return word if word in get_args(allowed) else "unspecified"


def _group_fields(g: cpb.Group) -> dict[str, Any]:
    return dict(
        id=g.id, name=g.name, kind=_word(cpb.GroupKind, g.kind, "GROUP_KIND_", GroupKindWord),
        level=_word(cpb.GroupLevel, g.level, "GROUP_LEVEL_", GroupLevelWord),
        store_id=g.store_id, city=g.city, qr_code_url=g.qr_code_url,
        member_count=g.member_count, capacity=g.capacity,
        state="active" if g.state == cpb.GROUP_STATE_ACTIVE
        else "archived" if g.state == cpb.GROUP_STATE_ARCHIVED else "unspecified",
    )


def group(g: cpb.Group) -> GroupView:
    return GroupView(**_group_fields(g))


def my_group(g: cpb.Group, membership: cpb.GroupMembership) -> MyGroupView:
    return MyGroupView(**_group_fields(g), joined_at=time_of(membership.join_time))


def _day(text: str) -> date | None:
    return date.fromisoformat(text) if text else None


def check_in(c: cpb.CheckIn, already: bool) -> CheckInView:
    return CheckInView(day=date.fromisoformat(c.day), checked_in_at=time_of(c.check_in_time),
                       group_id=c.group_id, streak=c.streak, best_streak=c.best_streak,
                       total_days=c.total_days, already_checked_in=already)


def check_in_streak(s: cpb.CheckInStreak) -> CheckInStreakView:
    return CheckInStreakView(streak=s.streak, best_streak=s.best_streak,
                             total_days=s.total_days, last_day=_day(s.last_day),
                             checked_in_today=s.checked_in_today)


def chain_entry(e: cpb.ChainEntry) -> ChainEntryView:
    state = {cpb.CHAIN_ENTRY_STATE_ACTIVE: "active",
             cpb.CHAIN_ENTRY_STATE_WITHDRAWN: "withdrawn"}.get(e.state, "unspecified")
    return ChainEntryView(chain_id=e.chain_id, quantity=e.quantity, amount_fen=e.amount_fen,
                          state=state, position=e.position,
                          joined_at=time_of(e.join_time), updated_at=time_of(e.update_time))


def chain(c: cpb.Chain, member_id: str) -> ChainView:
    """The chain as one member sees it: its details and that member's entry only."""
    mine = next((e for e in c.entries if e.member_id == member_id), None)
    state = {cpb.CHAIN_STATE_OPEN: "open", cpb.CHAIN_STATE_CLOSED: "closed"}.get(
        c.state, "unspecified")
    return ChainView(
        id=c.id, group_id=c.group_id, product=c.product, price_fen=c.price_fen, stock=c.stock,
        stock_left=max(0, c.stock - c.sold),
        per_member_limit=c.per_member_limit or c.stock, deadline=time_of(c.deadline),
        state=state,
        my_entry=chain_entry(mine) if mine is not None else None,
    )
