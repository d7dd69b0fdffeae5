"""Merging two member records of one person (MergeMembers, BindVerifiedPhone): what
the survivor holds afterwards and what is left of the merged member. No I/O: the use
case (services/member/merging.py) loads both members and the merged member's rows and
writes the result in one unit of work.

What moves, and how
- Identities: all of the merged member's go to the survivor, except the ones the
  caller releases (a phone binding drops the merged member's other, unverified phones:
  the verified number wins). The merged member keeps none.
- Points: the open lots move as they are (same id, amount, remaining, earned and
  expiry times, order), so they expire when they would have and an order's refund
  still takes back its own lot. The balances add up. Spent or expired lots stay
  behind as history (nothing reads them by member).
- Ledger entries (points and stored value) and orders are re-owned as written: the
  survivor's history shows both, each entry's balance_after is the balance of the
  record it was written on (history, not recomputed), and the sum of the survivor's
  entries is its balance again. Re-owned orders keep their paid time and net growth,
  so the tier's evaluation window still counts them by date, and a later refund of
  one reverses points and growth on the survivor.
- Stored value adds up (a merge makes no money, so the top-up cap does not apply).
- Counts and totals add up; first paid is the earlier, last paid the later; the paid
  membership that ends later wins; co-branded and stored-value-opened if either is.
- Tier: the highest of the two current tiers and the tier the combined growth of the
  evaluation window qualifies for. A merge never moves anyone down: each record's
  tier was protected for its retention window, and the person keeps the better one.
  The retention clock (tier_since) is the one of the record whose tier is kept (the
  later one when both held it); a tier reached only by the combined growth starts
  now, recorded as a tier change with reason "merge".
- Profile, store, guide, channel, referrer: the survivor's, each filled from the
  merged member where the survivor's is empty. A referral between the two records
  (the person referring themselves) is dropped.
- Consents: per contact channel, the later decision of the two (a withdrawal made on
  either record is never undone by a merge).
- The merged member is kept, closed: merged_into names the survivor, balances and
  counts are zero, it takes no new activity. Members merged into it earlier are
  re-pointed to the survivor (never a chain of merges to follow)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from services.member.domain.errors import RuleViolation
from services.member.domain.members import Gender, Member, derive_kind
from services.member.domain.orders import Order
from services.member.domain.points import Lot, PointsEntry
from services.member.domain.stored_value import StoredValueEntry
from services.member.domain.tiers import TierChange, TierProgram

MERGE_REASON = "merge"


@dataclass(frozen=True, slots=True)
class MergedRows:
    """The merged member's rows that move: open lots, ledger entries and orders, and
    its net growth within the tier programme's evaluation window."""

    lots: tuple[Lot, ...] = ()
    points_entries: tuple[PointsEntry, ...] = ()
    sv_entries: tuple[StoredValueEntry, ...] = ()
    orders: tuple[Order, ...] = ()
    window_growth: int = 0


@dataclass(frozen=True, slots=True)
class Merge:
    """The outcome: both members changed in place, the re-owned rows, the identity
    lookups to bind to the survivor and to release, the members to re-point."""

    survivor: Member
    merged: Member
    lots: tuple[Lot, ...]
    points_entries: tuple[PointsEntry, ...]
    sv_entries: tuple[StoredValueEntry, ...]
    orders: tuple[Order, ...]
    moved_lookups: tuple[str, ...]
    released_lookups: tuple[str, ...]
    repoint: tuple[str, ...]
    tier_change: TierChange | None


def check_mergeable(survivor: Member, merged: Member) -> None:
    """RuleViolation unless `merged` may be merged into `survivor` now (already merged
    into the survivor is the caller's idempotent case, not checked here)."""
    if survivor.id == merged.id:
        raise RuleViolation("SELF_MERGE", "a member cannot be merged into itself")
    if survivor.merged_into:
        raise RuleViolation(
            "MEMBER_MERGED",
            f"member {survivor.id} was merged into another member and cannot receive a merge;"
            " merge into the member it was merged into",
            member_id=survivor.id,
            merged_into=survivor.merged_into,
        )
    if merged.merged_into:
        raise RuleViolation(
            "MEMBER_MERGED",
            f"member {merged.id} was already merged into another member",
            member_id=merged.id,
            merged_into=merged.merged_into,
        )


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return a if b is None or (a is not None and a >= b) else b


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    return a if b is None or (a is not None and a <= b) else b


def _merged_tier(
    survivor: Member,
    merged: Member,
    qualifying_growth: int,
    program: TierProgram,
    now: datetime,
) -> tuple[int, datetime | None]:
    """(level, tier_since) of the survivor after the merge (see the module docstring)."""
    qualified = program.qualifying_level(qualifying_growth)
    level = max(survivor.tier_level, merged.tier_level, qualified)
    holders = [m.tier_since for m in (survivor, merged) if m.tier_level == level]
    if not holders:
        return level, now
    since = None
    for held in holders:
        since = _later(since, held)
    return level, since


def merge(
    survivor: Member,
    merged: Member,
    rows: MergedRows,
    *,
    survivor_window_growth: int,
    program: TierProgram,
    now: datetime,
    consuming_threshold: int,
    release: Iterable[str] = (),
) -> Merge:
    """Merges `merged` into `survivor` (both changed in place, see the module
    docstring). `release`: lookups of the merged member's identities to drop rather
    than move. RuleViolation when the two cannot be merged (check_mergeable)."""
    check_mergeable(survivor, merged)
    s, m, to = survivor, merged, survivor.id
    released = set(release)
    moved_ids = [i for i in m.identities if i.lookup not in released]
    s.identities = [*s.identities, *moved_ids]

    # Profile and relationships: the survivor's unless empty there.
    for name in ("name", "nickname", "birthday", "city", "store_id", "guide_id"):
        if not getattr(s, name):
            setattr(s, name, getattr(m, name))
    if s.gender is Gender.UNSPECIFIED:
        s.gender = m.gender
    if not s.channel:
        s.channel = m.channel
    if s.referrer_id == m.id:
        s.referrer_id = ""  # referred by their own other record
    if not s.referrer_id and m.referrer_id != s.id:
        s.referrer_id = m.referrer_id
    for channel, (granted, at) in m.consents.items():
        mine = s.consents.get(channel)
        if mine is None or at > mine[1]:
            s.consents[channel] = (granted, at)

    # Value and statistics: added up.
    s.points_balance += m.points_balance
    s.stored_value_fen += m.stored_value_fen
    s.growth_value += m.growth_value
    s.paid_order_count += m.paid_order_count
    s.total_spent_fen += m.total_spent_fen
    s.first_paid_at = _earlier(s.first_paid_at, m.first_paid_at)
    s.last_paid_at = _later(s.last_paid_at, m.last_paid_at)
    s.paid_until = _later(s.paid_until, m.paid_until)
    s.co_branded = s.co_branded or m.co_branded
    s.stored_value_opened = s.stored_value_opened or m.stored_value_opened

    level, since = _merged_tier(s, m, survivor_window_growth + rows.window_growth, program, now)
    change = None
    if level != s.tier_level:
        change = TierChange(s.id, s.tier_level, level, MERGE_REASON, now)
    s.tier_level, s.tier_since = level, since

    repoint = tuple(m.absorbed)
    s.absorbed = [*s.absorbed, m.id, *repoint]
    s.kind = derive_kind(s, now, consuming_threshold)
    s.updated_at = now

    # The merged member: closed, nothing left.
    m.identities = []
    m.merged_into = to
    m.absorbed = []
    m.points_balance = m.stored_value_fen = m.growth_value = 0
    m.paid_order_count = m.total_spent_fen = 0
    m.first_paid_at = m.last_paid_at = m.paid_until = None
    m.co_branded = m.stored_value_opened = False
    m.tier_level, m.tier_since = 0, now
    m.kind = derive_kind(m, now, consuming_threshold)
    m.updated_at = now

    return Merge(
        survivor=s,
        merged=m,
        lots=tuple(replace(lot, member_id=to) for lot in rows.lots),
        points_entries=tuple(replace(e, member_id=to) for e in rows.points_entries),
        sv_entries=tuple(replace(e, member_id=to) for e in rows.sv_entries),
        orders=tuple(replace(o, member_id=to) for o in rows.orders),
        moved_lookups=tuple(i.lookup for i in moved_ids),
        released_lookups=tuple(sorted(released)),
        repoint=repoint,
        tier_change=change,
    )


def repointed(m: Member, survivor_id: str, now: datetime) -> Member:
    """A member merged earlier into a member now merged itself: it names the new
    survivor (one hop to follow, never a chain)."""
    m.merged_into = survivor_id
    m.updated_at = now
    return m
