"""Live-code routing rules (活码): which members a rule takes, in which order its
pool's groups fill, and what an overflow group is made of. No I/O.

A rule owns a pool: the groups whose pool_id is the rule's id. The pool is read only
through an index on (pool_id, open, fill order), so choosing a group costs the same
with 100 groups or 25,000."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
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


class _Choice:
    """A PoolFill answer that is not a group."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The pool has no open group: open the next one from the template.
OPEN_NEW = _Choice("OPEN_NEW")
# Not known from what was read (the pool's later groups may come first now): route
# the member in the next batch, after a fresh read.
UNDECIDED = _Choice("UNDECIDED")


class PoolFill:
    """Which group each route of a batch into one pool joins, decided in memory as the
    batch goes, the same groups routing the members one at a time would choose.

    `read`: the pool's first open groups in the fill order, as the store holds them,
    `limit` asked for. Joins only raise a group's key (its count) or close it, and the
    pool's unread open groups come after the last read one, so the smallest open key
    among the read groups is the pool's next group as long as it is not past the last
    read group's key as read. With `limit` at least the number of routes, that holds
    for every route (one of the first k read groups is untouched at the k-th route);
    with fewer groups read than asked, the read groups are all the pool's open ones."""

    def __init__(self, strategy: int, read: list[Doc], limit: int) -> None:
        # A group's place in the fill order (the store breaks ties by _id).
        self._key: Callable[[Doc], tuple[Any, ...]] = itemgetter(*POOL_ORDER[strategy], "_id")
        self._groups = {g["_id"]: g for g in read}
        self._complete = len(read) < limit
        self._last = self._key(read[-1]) if read else None

    def next_group(self) -> Doc | _Choice:
        key = self._key
        best, best_key = None, None
        for group in self._groups.values():
            if group["open"] and (best_key is None or key(group) < best_key):
                best, best_key = group, key(group)
        if best is None:
            return OPEN_NEW if self._complete else UNDECIDED
        if self._complete or (self._last is not None and best_key <= self._last):
            return best
        return UNDECIDED

    def update(self, group: Doc) -> None:
        """`group` as it is now (joined, or opened: then the read groups were all the
        pool's open ones, and this is the pool's only open group)."""
        self._groups[group["_id"]] = group
