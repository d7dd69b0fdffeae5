"""The member service application: every use case over one store, clock and cipher."""

from __future__ import annotations

from services.member.identities import IdentityUseCases
from services.member.ledgers import LedgerUseCases
from services.member.merging import MergeUseCases
from services.member.purchases import PurchaseUseCases
from services.member.service import MemberUseCases
from services.member.tiering import TierUseCases


class MemberApp(
    MemberUseCases,
    IdentityUseCases,
    LedgerUseCases,
    PurchaseUseCases,
    TierUseCases,
    MergeUseCases,
):
    """Composed from the use-case groups; they share MemberCore's plumbing."""
