"""What the catalogue holds: tag and segment definitions, their versions, manual
tag assignments. Typed records that the store, the use cases and the servicer pass
between them; times are epoch microseconds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from services.tagging.domain import expressions as ex

MANUAL, RULE, SCORE = "manual", "rule", "score"  # tag kinds


@dataclass(frozen=True, slots=True)
class TagDefinition:
    """A tag: manual (assigned by people), rule (an expression over features and
    other tags) or score (built in, refreshed by scoring runs). `expr` is the parsed
    expression of a rule tag, attached when the definition is loaded."""

    name: str
    kind: str
    group: str = ""
    display_name: str = ""
    description: str = ""
    expression: str = ""
    version: int = 1
    create_time: int = 0
    update_time: int = 0
    expr: ex.Expr | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    """A segment: an expression materialised as a bitmap; every change of its
    members is a new version (SegmentVersion). `count` is as of the last version."""

    id: str
    expression: str
    display_name: str = ""
    description: str = ""
    version: int = 0
    count: int = 0
    create_time: int = 0
    update_time: int = 0
    expr: ex.Expr | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class TagVersion:
    """A rule tag's expression as of `version`."""

    version: int
    expression: str
    create_time: int


@dataclass(frozen=True, slots=True)
class SegmentVersion:
    """A segment's membership change: how many joined and left, samples of both."""

    version: int
    count: int
    added: int
    removed: int
    sample_added: list[str]
    sample_removed: list[str]
    reason: str
    create_time: int


@dataclass(frozen=True, slots=True)
class ManualTag:
    """A manual tag on a member (by its dense index), who set it and when."""

    idx: int
    tag: str
    by: str
    at: int


D = TypeVar("D", TagDefinition, SegmentDefinition)


def parsed(definition: D) -> D:
    """The definition with its expression parsed (definitions are stored as text)."""
    if not definition.expression:
        return definition
    return replace(definition, expr=ex.parse(definition.expression))
