"""Documents <-> protos for the community API (the servicer's translation; no rules)."""

from __future__ import annotations

from typing import Any

from pond.community.v1 import community_pb2 as pb

Doc = dict[str, Any]
GROUP_STATES = {"active": pb.GROUP_STATE_ACTIVE, "archived": pb.GROUP_STATE_ARCHIVED}
GROUP_STATE_NAMES = {v: k for k, v in GROUP_STATES.items()}
MEMBERSHIP_STATES = {"active": pb.MEMBERSHIP_STATE_ACTIVE, "left": pb.MEMBERSHIP_STATE_LEFT,
                     "removed": pb.MEMBERSHIP_STATE_REMOVED}
CHAIN_STATES = {"open": pb.CHAIN_STATE_OPEN, "closed": pb.CHAIN_STATE_CLOSED}
CHAIN_STATE_NAMES = {v: k for k, v in CHAIN_STATES.items()}
ENTRY_STATES = {"active": pb.CHAIN_ENTRY_STATE_ACTIVE,
                "withdrawn": pb.CHAIN_ENTRY_STATE_WITHDRAWN}


def ts(micros: int) -> Any:
    """A Timestamp field's value for a message constructor (None: unset). A dict: the
    constructor fills the field from it, ~350 ns less than building a Timestamp
    for it to copy (RouteMember's answer has five)."""
    if not micros:
        return None
    seconds, rest = divmod(int(micros), 1_000_000)
    return {"seconds": seconds, "nanos": rest * 1000}


def micros_of(t: Any) -> int:
    return int(t.seconds) * 1_000_000 + int(t.nanos) // 1000


def entry_rules_doc(r: pb.EntryRules) -> Doc:
    return {"min_tier_level": r.min_tier_level, "must_have_bought": r.must_have_bought,
            "entry_fee_fen": r.entry_fee_fen, "segment_id": r.segment_id}


def group_fields(g: pb.Group) -> Doc:
    """The settable fields of a group message, as a document's."""
    return {
        "name": g.name, "kind": g.kind, "level": g.level, "store_id": g.store_id,
        "city": g.city, "owner_guide_id": g.owner_guide_id, "capacity": g.capacity,
        "entry_rules": entry_rules_doc(g.entry_rules), "wecom_chat_id": g.wecom_chat_id,
        "qr_code_url": g.qr_code_url,
        "end_time": micros_of(g.end_time) if g.HasField("end_time") else 0,
    }


def group_pb(d: Doc) -> pb.Group:
    return pb.Group(
        id=d["_id"], name=d["name"], kind=d["kind"], level=d["level"], store_id=d["store_id"],
        city=d["city"], owner_guide_id=d["owner_guide_id"], capacity=d["capacity"],
        entry_rules=d["entry_rules"], state=GROUP_STATES[d["state"]],  # a dict: see ts
        wecom_chat_id=d["wecom_chat_id"], qr_code_url=d["qr_code_url"],
        member_count=d["member_count"], pool_id=d["pool_id"], sequence=d["sequence"],
        end_time=ts(d["end_time"]), create_time=ts(d["create_time"]),
        update_time=ts(d["update_time"]), archive_reason=d["archive_reason"],
    )


def membership_pb(d: Doc) -> pb.GroupMembership:
    return pb.GroupMembership(
        group_id=d["group_id"], member_id=d["member_id"], state=MEMBERSHIP_STATES[d["state"]],
        join_time=ts(d["join_time"]), leave_time=ts(d["leave_time"]),
        removed_by=d["removed_by"], reason=d["reason"], join_count=d["join_count"],
        rule_id=d["rule_id"],
    )


def template_doc(t: pb.GroupTemplate) -> Doc:
    return {"name_prefix": t.name_prefix, "kind": t.kind, "level": t.level,
            "store_id": t.store_id, "city": t.city, "owner_guide_id": t.owner_guide_id,
            "capacity": t.capacity, "entry_rules": entry_rules_doc(t.entry_rules),
            "qr_code_url": t.qr_code_url}


def match_doc(m: pb.RoutingMatch) -> Doc:
    return {"store_ids": list(m.store_ids), "cities": list(m.cities), "tags": list(m.tags),
            "min_tier_level": m.min_tier_level, "segment_ids": list(m.segment_ids)}


def rule_fields(r: pb.RoutingRule, has_template: bool) -> Doc:
    return {"name": r.name, "priority": r.priority, "match": match_doc(r.match),
            "fill_strategy": r.fill_strategy, "enabled": r.enabled,
            "template": template_doc(r.template) if has_template else None}


def rule_pb(d: Doc, open_groups: int) -> pb.RoutingRule:
    return pb.RoutingRule(
        id=d["_id"], name=d["name"], priority=d["priority"], match=pb.RoutingMatch(**d["match"]),
        fill_strategy=d["fill_strategy"], template=d["template"] or None, enabled=d["enabled"],
        last_sequence=d["last_sequence"], open_groups=open_groups,
        create_time=ts(d["create_time"]), update_time=ts(d["update_time"]),
    )


def check_in_pb(d: Doc) -> pb.CheckIn:
    return pb.CheckIn(member_id=d["member_id"], group_id=d["group_id"], day=d["day"],
                      check_in_time=ts(d["time"]), streak=d["streak"],
                      best_streak=d["best_streak"], total_days=d["total_days"])


def chain_entry_pb(d: Doc) -> pb.ChainEntry:
    return pb.ChainEntry(
        chain_id=d["chain_id"], member_id=d["member_id"], quantity=d["quantity"],
        amount_fen=d["amount_fen"], state=ENTRY_STATES[d["state"]], position=d["position"],
        join_time=ts(d["join_time"]), update_time=ts(d["update_time"]),
    )


def chain_pb(d: Doc, entries: list[Doc] | None = None) -> pb.Chain:
    chain = pb.Chain(
        id=d["_id"], group_id=d["group_id"], product=d["product"], price_fen=d["price_fen"],
        stock=d["stock"], per_member_limit=d["per_member_limit"], deadline=ts(d["deadline"]),
        state=CHAIN_STATES[d["state"]], sold=d["sold"], opened_by=d["opened_by"],
        create_time=ts(d["create_time"]), close_time=ts(d["close_time"]),
        closed_by=d["closed_by"],
    )
    if entries is not None:
        chain.entries.extend(chain_entry_pb(e) for e in entries)
        chain.total_fen = sum(e["amount_fen"] for e in entries)
    return chain
