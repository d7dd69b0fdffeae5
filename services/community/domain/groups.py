"""What a group is and who may enter it. Groups are documents (dicts) shaped here;
no I/O.

Capacity: 200 by default (a WeCom group QR code admits 200), at most 500 (a WeCom
group holds 500). `open` is kept on every write: active and below capacity, the one
flag routing's pool query reads (an index on pool, open, fill order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.community.domain.errors import RuleViolation

DEFAULT_CAPACITY = 200
MAX_CAPACITY = 500
MAX_NAME = 100
MAX_TEXT = 500  # urls, chat ids
ACTIVE, ARCHIVED = "active", "archived"
FIRST_LEVEL = 1  # GroupLevel FIRST: a group made without a level
GROUP_FIELDS = (
    "name", "kind", "level", "store_id", "city", "owner_guide_id", "capacity",
    "entry_rules", "wecom_chat_id", "qr_code_url", "end_time",
)
Doc = dict[str, Any]


@dataclass(frozen=True)
class EntryFacts:
    """What is known of the member for the entry rules (None: not needed, not asked)."""

    tier_level: int | None = None
    has_bought: bool | None = None
    in_segment: bool | None = None
    payment_id: str = ""


def entry_rules_doc(min_tier_level: int = 0, must_have_bought: bool = False,
                    entry_fee_fen: int = 0, segment_id: str = "") -> Doc:
    return {"min_tier_level": min_tier_level, "must_have_bought": must_have_bought,
            "entry_fee_fen": entry_fee_fen, "segment_id": segment_id}


def needs_member(rules: Doc) -> bool:
    """Whether checking `rules` needs the member service (tier, purchases)."""
    return bool(rules.get("min_tier_level") or rules.get("must_have_bought"))


def check_entry(rules: Doc, facts: EntryFacts) -> None:
    """RuleViolation naming the first entry rule the member does not meet."""
    min_tier = rules.get("min_tier_level", 0)
    if min_tier and (facts.tier_level or 0) < min_tier:
        raise RuleViolation("ENTRY_TIER_TOO_LOW",
                            f"the group needs tier level {min_tier} or above",
                            min_tier_level=str(min_tier))
    if rules.get("must_have_bought") and not facts.has_bought:
        raise RuleViolation("ENTRY_PURCHASE_REQUIRED", "the group is for members who have bought")
    if rules.get("segment_id") and not facts.in_segment:
        raise RuleViolation("ENTRY_SEGMENT_REQUIRED",
                            f"the group is for segment {rules['segment_id']!r}",
                            segment_id=rules["segment_id"])
    if rules.get("entry_fee_fen", 0) > 0 and not facts.payment_id:
        raise RuleViolation("ENTRY_FEE_REQUIRED",
                            f"the group has an entry fee of {rules['entry_fee_fen']} fen:"
                            " name the payment (entry_payment_id)",
                            entry_fee_fen=str(rules["entry_fee_fen"]))


def capacity_problem(capacity: int) -> str:
    """The problem with a capacity ("" when fine); 0 stands for the default."""
    if capacity < 0 or capacity > MAX_CAPACITY:
        return f"must be between 1 and {MAX_CAPACITY} (0: the default {DEFAULT_CAPACITY})"
    return ""


def refresh_open(group: Doc) -> Doc:
    group["open"] = group["state"] == ACTIVE and group["member_count"] < group["capacity"]
    return group


def new_group(group_id: str, fields: Doc, now: int, *, pool_id: str = "",
              sequence: int = 0) -> Doc:
    doc: Doc = {
        "_id": group_id, **{f: fields.get(f) for f in GROUP_FIELDS},
        "state": ACTIVE, "member_count": 0, "pool_id": pool_id, "sequence": sequence,
        "create_time": now, "update_time": now, "archive_reason": "",
    }
    doc["capacity"] = doc["capacity"] or DEFAULT_CAPACITY
    doc["entry_rules"] = doc["entry_rules"] or entry_rules_doc()
    doc["end_time"] = doc["end_time"] or 0
    for name in ("name", "store_id", "city", "owner_guide_id", "wecom_chat_id", "qr_code_url"):
        doc[name] = doc[name] or ""
    doc["kind"] = doc["kind"] or 0
    doc["level"] = doc["level"] or FIRST_LEVEL
    return refresh_open(doc)


def updated_group(group: Doc, changes: Doc, now: int) -> Doc:
    """`group` with `changes` (field -> value) applied; RuleViolation for a capacity
    below its members or a change to an archived group."""
    if group["state"] != ACTIVE:
        raise RuleViolation("GROUP_ARCHIVED", f"group {group['_id']!r} is archived")
    out = {**group, **changes, "update_time": now}
    if "capacity" in changes:
        out["capacity"] = changes["capacity"] or DEFAULT_CAPACITY
        if out["capacity"] < group["member_count"]:
            raise RuleViolation("CAPACITY_BELOW_MEMBERS",
                                f"the group has {group['member_count']} members",
                                member_count=str(group["member_count"]))
    return refresh_open(out)


def archived_group(group: Doc, now: int, reason: str) -> Doc:
    return refresh_open({**group, "state": ARCHIVED, "archive_reason": reason,
                         "update_time": now})


def ensure_joinable(group: Doc) -> None:
    if group["state"] != ACTIVE:
        raise RuleViolation("GROUP_ARCHIVED", f"group {group['_id']!r} is archived",
                            group_id=group["_id"])
    if group["member_count"] >= group["capacity"]:
        raise RuleViolation("GROUP_FULL", f"group {group['_id']!r} is full",
                            group_id=group["_id"])
