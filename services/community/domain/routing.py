"""Live-code routing rules (活码): which members a rule takes, in which order its
pool's groups fill, and what an overflow group is made of. No I/O.

A rule owns a pool: the groups whose pool_id is the rule's id. The pool is read only
through an index on (pool_id, open, fill order), so choosing a group costs the same
with 100 groups or 25,000."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.community.domain.groups import new_group

FILL_FIRST, BALANCE = 1, 2
# The store order of a pool's open groups per fill strategy (the pool's index).
POOL_ORDER = {FILL_FIRST: ("sequence",), BALANCE: ("member_count", "sequence")}
RULE_FIELDS = ("name", "priority", "match", "fill_strategy", "template", "enabled")
MAX_MATCH_VALUES = 100
Doc = dict[str, Any]


@dataclass
class MatchFacts:
    """What is known of the member for rule matching (None: not asked)."""

    store_id: str = ""
    city: str = ""
    tier_level: int | None = None
    tags: frozenset[str] | None = None
    segments: dict[str, bool] = field(default_factory=dict)


def empty_match() -> Doc:
    return {"store_ids": [], "cities": [], "tags": [], "min_tier_level": 0, "segment_ids": []}


def new_rule(rule_id: str, fields: Doc, now: int) -> Doc:
    return {
        "_id": rule_id, "name": fields.get("name") or "", "priority": fields.get("priority", 0),
        "match": fields.get("match") or empty_match(),
        "fill_strategy": fields.get("fill_strategy") or FILL_FIRST,
        "template": fields.get("template"), "enabled": fields.get("enabled", True),
        "last_sequence": 0, "deleted": False, "create_time": now, "update_time": now,
    }


def matches(match: Doc, facts: MatchFacts) -> bool:
    """Whether the member fits every condition the match sets."""
    if match["store_ids"] and facts.store_id not in match["store_ids"]:
        return False
    if match["cities"] and facts.city not in match["cities"]:
        return False
    if match["min_tier_level"] and (facts.tier_level or 0) < match["min_tier_level"]:
        return False
    if match["tags"] and not set(match["tags"]) <= (facts.tags or frozenset()):
        return False
    return not match["segment_ids"] or any(
        facts.segments.get(s, False) for s in match["segment_ids"]
    )


def needs(match: Doc) -> tuple[bool, bool, bool]:
    """(member service, tags, segments): what matching asks other services."""
    return bool(match["min_tier_level"]), bool(match["tags"]), bool(match["segment_ids"])


def overflow_group(rule: Doc, sequence: int, now: int) -> Doc:
    """The pool's next group, from the rule's template: "<prefix> <sequence>"."""
    template = rule["template"]
    fields = {**template, "name": f"{template['name_prefix'] or rule['name']} {sequence}",
              "qr_code_url": template["qr_code_url"].replace("{sequence}", str(sequence))}
    return new_group(pool_group_id(rule["_id"], sequence), fields, now,
                     pool_id=rule["_id"], sequence=sequence)


def pool_group_id(rule_id: str, sequence: int) -> str:
    """An overflow group's id: one per pool and sequence, so two replicas opening the
    same group collide on the insert instead of opening two."""
    return f"{rule_id}-{sequence}"
