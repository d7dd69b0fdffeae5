"""Request checks of the community API: each adds field violations (never raises), so
one call reports every problem; INVALID_ARGUMENT before anything is read or written."""

from __future__ import annotations

import re
from typing import Any

from pond.community.v1 import community_pb2 as pb

from services.community.domain import chains as dch
from services.community.domain import groups as dg
from services.community.domain import routing as dr
from services.runtime.errors import Violations
from services.runtime.fields import check_id, check_ids

CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
KINDS = frozenset(pb.GroupKind.values()) - {pb.GROUP_KIND_UNSPECIFIED}
LEVELS = frozenset(pb.GroupLevel.values())
FILLS = frozenset(pb.FillStrategy.values())
MAX_TIER = 10
MAX_PRODUCT = 200
MAX_REASON = 500
MAX_PRICE_FEN = dch.MAX_PRICE_FEN
MAX_STOCK = dch.MAX_STOCK


def client_id(v: Violations, path: str, value: str) -> None:
    """An id a client may choose (letters, digits, - and _; ':' separates ids here)."""
    if value and not CLIENT_ID.fullmatch(value):
        v.add(path, "1-64 letters, digits, '-' or '_'")


def text(v: Violations, path: str, value: str, limit: int = dg.MAX_TEXT,
         required: bool = False) -> None:
    if required and not value.strip():
        v.add(path, "is required")
    elif len(value) > limit:
        v.add(path, f"must be at most {limit} characters")


def capacity(v: Violations, path: str, value: int) -> None:
    problem = dg.capacity_problem(value)
    if problem:
        v.add(path, problem)


def entry_rules(v: Violations, path: str, r: pb.EntryRules) -> None:
    v.check(0 <= r.min_tier_level <= MAX_TIER, f"{path}.min_tier_level", f"0..{MAX_TIER}")
    v.check(r.entry_fee_fen >= 0, f"{path}.entry_fee_fen", "must not be negative")
    check_id(v, f"{path}.segment_id", r.segment_id)


def kind(v: Violations, path: str, value: int) -> None:
    v.check(value in KINDS, path, "a GroupKind is required")


def level(v: Violations, path: str, value: int) -> None:
    v.check(value in LEVELS, path, "must be a GroupLevel")


GROUP_CHECKS: dict[str, Any] = {
    "name": lambda v, p, g: text(v, p, g.name, dg.MAX_NAME, required=True),
    "level": lambda v, p, g: level(v, p, g.level),
    "store_id": lambda v, p, g: check_id(v, p, g.store_id),
    "city": lambda v, p, g: text(v, p, g.city, dg.MAX_NAME),
    "owner_guide_id": lambda v, p, g: check_id(v, p, g.owner_guide_id),
    "capacity": lambda v, p, g: capacity(v, p, g.capacity),
    "entry_rules": lambda v, p, g: entry_rules(v, p, g.entry_rules),
    "wecom_chat_id": lambda v, p, g: text(v, p, g.wecom_chat_id),
    "qr_code_url": lambda v, p, g: text(v, p, g.qr_code_url),
    "end_time": lambda v, p, g: None,  # checked with the clock by the servicer
}


def group(v: Violations, g: pb.Group, paths: set[str] | None = None) -> None:
    """The group's fields (all, or those in `paths` for an update)."""
    for name, check in GROUP_CHECKS.items():
        if paths is None or name in paths:
            check(v, f"group.{name}", g)
    if paths is None:
        kind(v, "group.kind", g.kind)
        check_id(v, "group.pool_id", g.pool_id)
        if g.kind == pb.GROUP_KIND_PROMOTION_FLASH and not g.HasField("end_time"):
            v.add("group.end_time", "a promotion flash group needs its end time")


def mask(v: Violations, paths: list[str], allowed: set[str]) -> set[str]:
    chosen = set(paths)
    if not chosen:
        v.add("update_mask", "name the fields to update")
    for p in sorted(chosen - allowed):
        v.add("update_mask", f"{p!r} cannot be updated")
    return chosen & allowed


def rule(v: Violations, r: pb.RoutingRule, has_template: bool,
         paths: set[str] | None = None) -> None:
    def wanted(name: str) -> bool:
        return paths is None or name in paths

    if wanted("name"):
        text(v, "rule.name", r.name, dg.MAX_NAME, required=True)
    if wanted("fill_strategy"):
        v.check(r.fill_strategy in FILLS, "rule.fill_strategy", "must be a FillStrategy")
    if wanted("match"):
        m = r.match
        for name in ("store_ids", "cities", "tags", "segment_ids"):
            values = list(getattr(m, name))
            if len(values) > dr.MAX_MATCH_VALUES:
                v.add(f"rule.match.{name}", f"at most {dr.MAX_MATCH_VALUES}")
            check_ids(v, f"rule.match.{name}", values)
        v.check(0 <= m.min_tier_level <= MAX_TIER, "rule.match.min_tier_level",
                f"0..{MAX_TIER}")
    if wanted("template") and has_template:
        t = r.template
        text(v, "rule.template.name_prefix", t.name_prefix, dg.MAX_NAME)
        kind(v, "rule.template.kind", t.kind)
        level(v, "rule.template.level", t.level)
        check_id(v, "rule.template.store_id", t.store_id)
        text(v, "rule.template.city", t.city, dg.MAX_NAME)
        check_id(v, "rule.template.owner_guide_id", t.owner_guide_id)
        capacity(v, "rule.template.capacity", t.capacity)
        entry_rules(v, "rule.template.entry_rules", t.entry_rules)
        text(v, "rule.template.qr_code_url", t.qr_code_url)
