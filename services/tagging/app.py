"""The tagging service application: every use case over one engine."""

from __future__ import annotations

from services.tagging.members import MemberUseCases
from services.tagging.segments import SegmentUseCases
from services.tagging.tags import CatalogueUseCases


class TaggingApp(CatalogueUseCases, MemberUseCases, SegmentUseCases):
    """Composed from the use-case groups; they share TaggingCore."""
