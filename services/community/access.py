"""Who may call what in the community service (the role sets are the runtime's).

Customers reach their own joins, routing, check-ins and chain entries through the
gateway, which acts for the member it verified: every member-scoped method checks it
(ensure_acts_for). Guides and operators (and services) manage groups, rules and
chains; routing rules, the brand's configuration, are back office (operators and
services). Group and chain details carry no member data (GetChain shows the gateway
only its member's entry)."""

from __future__ import annotations

from services.runtime.auth import BACK_OFFICE, EVERYONE, STAFF, Role

AUTH_RULES: dict[str, frozenset[Role]] = {
    "CreateGroup": STAFF,
    "GetGroup": EVERYONE,
    "ListGroups": STAFF,
    "UpdateGroup": STAFF,
    "ArchiveGroup": STAFF,
    "JoinGroup": EVERYONE,
    "LeaveGroup": EVERYONE,
    "RemoveFromGroup": STAFF,
    "ListGroupMembers": STAFF,
    "ListMemberGroups": EVERYONE,
    "IsMemberInAnyGroup": EVERYONE,
    "CreateRoutingRule": BACK_OFFICE,
    "GetRoutingRule": STAFF,
    "ListRoutingRules": STAFF,
    "UpdateRoutingRule": BACK_OFFICE,
    "DeleteRoutingRule": BACK_OFFICE,
    "RouteMember": EVERYONE,
    "CheckIn": EVERYONE,
    "GetCheckInStreak": EVERYONE,
    "OpenChain": STAFF,
    "GetChain": EVERYONE,
    "ListChains": EVERYONE,
    "JoinChain": EVERYONE,
    "ChangeChainEntry": EVERYONE,
    "WithdrawChainEntry": EVERYONE,
    "CloseChain": STAFF,
    # Column schedules: the brand's operations (guides read what is posted).
    "CreateColumn": BACK_OFFICE,
    "GetColumn": STAFF,
    "ListColumns": STAFF,
    "UpdateColumn": BACK_OFFICE,
    "ArchiveColumn": BACK_OFFICE,
    "ListColumnPosts": STAFF,
    # Activity and health: WeCom's statistics come from a service (or an operator's
    # import); guides see their groups' health.
    "RecordGroupActivity": BACK_OFFICE,
    "GetGroupHealth": STAFF,
    "RankGroupsByHealth": STAFF,
    "GetColumnEffect": STAFF,
    # Graduation moves many members at once: back office.
    "GraduateMembers": BACK_OFFICE,
}
