"""Tag and segment definitions: validation, versions, the built-in score tags."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from services.runtime.clock import epoch_micros
from services.runtime.errors import invalid_argument
from services.tagging.domain import expressions as ex
from services.tagging.domain import scoring as sc
from services.tagging.domain.definitions import SCORE, SegmentDefinition, TagDefinition, parsed
from services.tagging.domain.scoring import in_dependency_order
from services.tagging.store import TaggingStore

DOMAIN = "pond.tagging"
KEY_RE = re.compile(r"^[a-z][a-z0-9_:.\-]{0,63}$")


def check_key(path: str, key: str) -> list[tuple[str, str]]:
    if not KEY_RE.match(key):
        return [
            (
                path,
                "must be 1-64 characters: a lower-case letter, then lower-case letters,"
                " digits or _ : . -",
            )
        ]
    return []


def check_expression(path: str, source: str) -> ex.Expr:
    """Parses an expression or raises INVALID_ARGUMENT naming the position."""
    if not source.strip():
        raise invalid_argument([(path, "an expression is required")], domain=DOMAIN)
    try:
        return ex.parse(source)
    except ex.ExpressionError as err:
        raise invalid_argument(
            [(path, str(err))], domain=DOMAIN, reason="INVALID_EXPRESSION"
        ) from err


def check_references(
    path: str,
    expr: ex.Expr,
    *,
    tags: Mapping[str, TagDefinition],
    segments: Mapping[str, SegmentDefinition],
    self_key: str = "",
    self_kind: str = "",
) -> None:
    """Unknown tags or segments and reference cycles are INVALID_ARGUMENT."""
    problems = []
    for tag in sorted(ex.referenced_tags(expr)):
        if tag not in tags and not (self_kind == "tag" and tag == self_key):
            problems.append((path, f"unknown tag {tag!r}"))
    for seg in sorted(ex.referenced_segments(expr)):
        if seg not in segments and not (self_kind == "segment" and seg == self_key):
            problems.append((path, f"unknown segment {seg!r}"))
    if problems:
        raise invalid_argument(problems, domain=DOMAIN, reason="UNKNOWN_REFERENCE")
    named: Mapping[str, TagDefinition | SegmentDefinition] = (
        tags if self_kind == "tag" else segments
    )
    defs = {k: d.expr for k, d in named.items() if d.expr is not None}
    defs[self_key] = expr
    refs = ex.referenced_tags if self_kind == "tag" else ex.referenced_segments
    try:
        in_dependency_order(defs, refs)
    except ValueError as err:
        raise invalid_argument(
            [(path, f"references itself: {err}")], domain=DOMAIN, reason="SELF_REFERENCE"
        ) from err


async def ensure_score_tags(
    store: TaggingStore, categories: Mapping[str, int], now: datetime
) -> list[TagDefinition]:
    """Built-in score tags exist in the catalogue (new categories add their
    repurchase-due tag). Returns every tag definition, parsed."""
    tags = await store.list_tags()
    existing = {t.name for t in tags}
    for name, (group, display) in sc.score_tag_names(categories).items():
        if name not in existing:
            tag = TagDefinition(
                name,
                SCORE,
                group,
                display,
                "built-in score, refreshed by scoring runs",
                create_time=epoch_micros(now),
                update_time=epoch_micros(now),
            )
            await store.put_tag(tag)
            tags.append(tag)
    return [parsed(t) for t in sorted(tags, key=lambda t: t.name)]
