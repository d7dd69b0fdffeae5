"""The CommunityService servicer: checks input, turns protos into use-case calls and
results back into protos. No rules here (domain/), no I/O (the use cases). Who may
call what: access.py (AUTH_RULES stays importable from here)."""

from __future__ import annotations

from dataclasses import dataclass

from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc

from services.community import convert
from services.community import validation as val
from services.community.access import AUTH_RULES as AUTH_RULES  # re-exported
from services.community.activity import Activity
from services.community.chains import Chains
from services.community.checkin import CheckIns
from services.community.columns import Columns
from services.community.columns_api import ColumnsApi
from services.community.graduation import Graduation
from services.community.graduation_api import GraduationApi
from services.community.groups import Groups
from services.community.health_api import HealthApi
from services.community.membership import Joined, Membership
from services.community.routing import Routing
from services.community.wecom.receiver import CallbackServer
from services.community.wecom_sync import WeComSync
from services.community.writes import DOMAIN
from services.runtime import paging
from services.runtime.auth import Role, current_caller, ensure_acts_for
from services.runtime.errors import Violations
from services.runtime.fields import check_id, timestamp
from services.runtime.idempotency import Idempotent

# A key is the member's own within a chain: two customers' apps that happen to make
# the same key never collide.
_ENTRY = ("chain_id", "member_id")
JOIN_CHAIN = Idempotent("JoinChain", pb.ChainEntry, scope_fields=_ENTRY)
CHANGE_CHAIN_ENTRY = Idempotent("ChangeChainEntry", pb.ChainEntry, scope_fields=_ENTRY)
WITHDRAW_CHAIN_ENTRY = Idempotent("WithdrawChainEntry", pb.ChainEntry, scope_fields=_ENTRY)
GROUP_PATHS = set(val.GROUP_CHECKS)
RULE_PATHS = {"name", "priority", "match", "fill_strategy", "template", "enabled"}


@dataclass
class UseCases:
    groups: Groups
    membership: Membership
    routing: Routing
    check_ins: CheckIns
    chains: Chains
    columns: Columns
    wecom: WeComSync
    activity: Activity
    graduation: Graduation
    callbacks: CallbackServer | None = None  # the WeCom callback receiver, when configured


def _ids(*fields: tuple[str, str]) -> None:
    """Required ids: (path, value) each."""
    v = Violations(DOMAIN)
    for path, value in fields:
        check_id(v, path, value, required=True)
    v.raise_if_any()


def _member(request, *more: tuple[str, str]) -> None:
    """A member-scoped call: its ids given, and the gateway acting for that member."""
    _ids(("member_id", request.member_id), *more)
    ensure_acts_for(request.member_id)


def _subject() -> str:
    caller = current_caller.get()
    return caller.subject if caller else ""


def _joined_pb(j: Joined) -> pb.JoinGroupResponse:
    return pb.JoinGroupResponse(membership=convert.membership_pb(j.membership),
                                group=convert.group_pb(j.group),
                                already_member=j.already_member, first_join=j.first_join)


class CommunityServicer(ColumnsApi, HealthApi, GraduationApi,
                        community_pb2_grpc.CommunityServiceServicer):
    def __init__(self, uc: UseCases) -> None:
        self.uc = uc
        self.columns = uc.columns
        self.activity = uc.activity
        self.graduation = uc.graduation

    def _end_time(self, v: Violations, g: pb.Group) -> None:
        end = timestamp(v, g, "end_time", path="group.end_time")
        if end is not None and end <= self.uc.groups.w.now():
            v.add("group.end_time", "must be in the future")

    # -- groups --
    async def CreateGroup(self, request: pb.CreateGroupRequest, context) -> pb.Group:
        v = Violations(DOMAIN)
        val.client_id(v, "group_id", request.group_id)
        val.group(v, request.group)
        self._end_time(v, request.group)
        v.raise_if_any()
        fields = convert.group_fields(request.group)
        fields["pool_id"] = request.group.pool_id
        return convert.group_pb(await self.uc.groups.create(request.group_id, fields))

    async def GetGroup(self, request: pb.GetGroupRequest, context) -> pb.Group:
        _ids(("group_id", request.group_id))
        return convert.group_pb(await self.uc.groups.get(request.group_id))

    async def ListGroups(self, request: pb.ListGroupsRequest, context) -> pb.ListGroupsResponse:
        v = Violations(DOMAIN)
        for path in ("store_id", "owner_guide_id", "pool_id"):
            check_id(v, path, getattr(request, path))
        val.text(v, "city", request.city)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        where: dict = {name: getattr(request, name) for name in (
            "kind", "level", "store_id", "city", "owner_guide_id", "pool_id")
            if getattr(request, name)}
        if request.state:
            where["state"] = convert.GROUP_STATE_NAMES.get(request.state, "")
        groups = await self.uc.groups.list_groups(where, page.get("a", ""), page.fetch)
        groups, token = page.finish(groups, lambda g: {"a": g["_id"]})
        return pb.ListGroupsResponse(groups=[convert.group_pb(g) for g in groups],
                                     next_page_token=token)

    async def UpdateGroup(self, request: pb.UpdateGroupRequest, context) -> pb.Group:
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id, required=True)
        paths = val.mask(v, list(request.update_mask.paths), GROUP_PATHS)
        val.group(v, request.group, paths)
        if "end_time" in paths and request.group.HasField("end_time"):
            self._end_time(v, request.group)
        v.raise_if_any()
        fields = convert.group_fields(request.group)
        changes = {p: fields[p] for p in paths}
        return convert.group_pb(await self.uc.groups.update(request.group_id, changes))

    async def ArchiveGroup(self, request: pb.ArchiveGroupRequest, context) -> pb.Group:
        _ids(("group_id", request.group_id))
        return convert.group_pb(await self.uc.groups.archive(request.group_id))

    # -- membership --
    async def JoinGroup(self, request: pb.JoinGroupRequest, context) -> pb.JoinGroupResponse:
        _member(request, ("group_id", request.group_id))
        v = Violations(DOMAIN)
        check_id(v, "entry_payment_id", request.entry_payment_id)
        v.raise_if_any()
        return _joined_pb(await self.uc.membership.join(
            request.group_id, request.member_id, request.entry_payment_id))

    async def LeaveGroup(self, request: pb.LeaveGroupRequest, context) -> pb.GroupMembership:
        _member(request, ("group_id", request.group_id))
        return convert.membership_pb(
            await self.uc.membership.leave(request.group_id, request.member_id))

    async def RemoveFromGroup(self, request: pb.RemoveFromGroupRequest,
                              context) -> pb.GroupMembership:
        _ids(("group_id", request.group_id), ("member_id", request.member_id))
        v = Violations(DOMAIN)
        val.text(v, "reason", request.reason, val.MAX_REASON)
        v.raise_if_any()
        return convert.membership_pb(await self.uc.membership.leave(
            request.group_id, request.member_id, removed_by=_subject() or "staff",
            reason=request.reason))

    async def ListGroupMembers(self, request: pb.ListGroupMembersRequest,
                               context) -> pb.ListGroupMembersResponse:
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id, required=True)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        items = await self.uc.membership.group_members(
            request.group_id, request.include_past, page.get("a", ""), page.fetch)
        items, token = page.finish(items, lambda d: {"a": d["_id"]})
        return pb.ListGroupMembersResponse(
            memberships=[convert.membership_pb(d) for d in items], next_page_token=token)

    async def ListMemberGroups(self, request: pb.ListMemberGroupsRequest,
                               context) -> pb.ListMemberGroupsResponse:
        v = Violations(DOMAIN)
        check_id(v, "member_id", request.member_id, required=True)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        items = await self.uc.membership.member_groups(
            request.member_id, request.include_past, page.get("a", ""), page.fetch)
        items, token = page.finish(items, lambda d: {"a": d["_id"]})
        return pb.ListMemberGroupsResponse(
            memberships=[convert.membership_pb(d) for d in items], next_page_token=token)

    async def IsMemberInAnyGroup(self, request: pb.IsMemberInAnyGroupRequest,
                                 context) -> pb.IsMemberInAnyGroupResponse:
        _member(request)
        count, ever = await self.uc.membership.in_any_group(request.member_id)
        return pb.IsMemberInAnyGroupResponse(in_group=count > 0, group_count=count,
                                             ever_joined=ever)

    # -- routing --
    async def CreateRoutingRule(self, request: pb.CreateRoutingRuleRequest,
                                context) -> pb.RoutingRule:
        v = Violations(DOMAIN)
        val.client_id(v, "rule_id", request.rule_id)
        has_template = request.rule.HasField("template")
        val.rule(v, request.rule, has_template)
        v.raise_if_any()
        fields = convert.rule_fields(request.rule, has_template)
        fields["enabled"] = True  # a new rule routes; UpdateRoutingRule turns it off
        return convert.rule_pb(await self.uc.routing.create_rule(request.rule_id, fields), 0)

    async def GetRoutingRule(self, request: pb.GetRoutingRuleRequest, context) -> pb.RoutingRule:
        _ids(("rule_id", request.rule_id))
        rule = await self.uc.routing.get_rule(request.rule_id)
        return convert.rule_pb(rule, await self.uc.routing.open_groups(rule["_id"]))

    async def ListRoutingRules(self, request: pb.ListRoutingRulesRequest,
                               context) -> pb.ListRoutingRulesResponse:
        v = Violations(DOMAIN)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        rules = await self.uc.routing.list_rules(page.get("a", ""), page.fetch)
        rules, token = page.finish(rules, lambda r: {"a": r["_id"]})
        return pb.ListRoutingRulesResponse(
            rules=[convert.rule_pb(r, await self.uc.routing.open_groups(r["_id"]))
                   for r in rules], next_page_token=token)

    async def UpdateRoutingRule(self, request: pb.UpdateRoutingRuleRequest,
                                context) -> pb.RoutingRule:
        v = Violations(DOMAIN)
        check_id(v, "rule_id", request.rule_id, required=True)
        paths = val.mask(v, list(request.update_mask.paths), RULE_PATHS)
        has_template = request.rule.HasField("template")
        val.rule(v, request.rule, has_template, paths)
        v.raise_if_any()
        fields = convert.rule_fields(request.rule, has_template)
        rule = await self.uc.routing.update_rule(request.rule_id, {p: fields[p] for p in paths})
        return convert.rule_pb(rule, await self.uc.routing.open_groups(rule["_id"]))

    async def DeleteRoutingRule(self, request: pb.DeleteRoutingRuleRequest,
                                context) -> pb.DeleteRoutingRuleResponse:
        _ids(("rule_id", request.rule_id))
        await self.uc.routing.delete_rule(request.rule_id)
        return pb.DeleteRoutingRuleResponse()

    async def RouteMember(self, request: pb.RouteMemberRequest,
                          context) -> pb.RouteMemberResponse:
        _member(request)
        v = Violations(DOMAIN)
        for path in ("rule_id", "store_id", "entry_payment_id"):
            check_id(v, path, getattr(request, path))
        val.text(v, "city", request.city, 100)
        v.raise_if_any()
        routed = await self.uc.routing.route(request.member_id, request.rule_id,
                                             request.store_id, request.city,
                                             request.entry_payment_id)
        j = routed.joined
        return pb.RouteMemberResponse(
            group=convert.group_pb(j.group), qr_code_url=j.group["qr_code_url"],
            membership=convert.membership_pb(j.membership), rule_id=routed.rule_id,
            already_member=j.already_member, first_join=j.first_join,
            opened_group=routed.opened_group)

    # -- check-in --
    async def CheckIn(self, request: pb.CheckInRequest, context) -> pb.CheckInResponse:
        _member(request)
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id)
        v.raise_if_any()
        doc, already = await self.uc.check_ins.check_in(request.member_id, request.group_id)
        return pb.CheckInResponse(check_in=convert.check_in_pb(doc), already_checked_in=already)

    async def GetCheckInStreak(self, request: pb.GetCheckInStreakRequest,
                               context) -> pb.CheckInStreak:
        _member(request)
        s = await self.uc.check_ins.streak(request.member_id)
        return pb.CheckInStreak(member_id=s.member_id, streak=s.streak,
                                best_streak=s.best_streak, total_days=s.total_days,
                                last_day=s.last_day, checked_in_today=s.checked_in_today)

    # -- chains --
    async def OpenChain(self, request: pb.OpenChainRequest, context) -> pb.Chain:
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id, required=True)
        val.client_id(v, "chain_id", request.chain_id)
        val.text(v, "product", request.product, val.MAX_PRODUCT, required=True)
        v.check(0 < request.price_fen <= val.MAX_PRICE_FEN, "price_fen",
                f"1..{val.MAX_PRICE_FEN}")
        v.check(0 < request.stock <= val.MAX_STOCK, "stock", f"1..{val.MAX_STOCK}")
        v.check(0 <= request.per_member_limit <= max(request.stock, 0), "per_member_limit",
                "0 (up to the stock) .. stock")
        deadline = timestamp(v, request, "deadline", required=True)
        v.raise_if_any()
        assert deadline is not None
        chain = await self.uc.chains.open(
            request.chain_id, request.group_id, request.product, request.price_fen,
            request.stock, request.per_member_limit, convert.micros_of(request.deadline),
            _subject())
        return convert.chain_pb(chain, [])

    async def GetChain(self, request: pb.GetChainRequest, context) -> pb.Chain:
        _ids(("chain_id", request.chain_id))
        chain, entries = await self.uc.chains.get(request.chain_id)
        caller = current_caller.get()
        if caller is not None and caller.role is Role.GATEWAY:  # only its member's entry
            entries = [e for e in entries if e["member_id"] == caller.member_id]
        return convert.chain_pb(chain, entries)

    async def ListChains(self, request: pb.ListChainsRequest, context) -> pb.ListChainsResponse:
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        state = convert.CHAIN_STATE_NAMES.get(request.state, "")
        chains = await self.uc.chains.list_chains(request.group_id, state, page.get("a", ""),
                                           page.fetch)
        chains, token = page.finish(chains, lambda c: {"a": c["_id"]})
        return pb.ListChainsResponse(chains=[convert.chain_pb(c) for c in chains],
                                     next_page_token=token)

    def _chain_call(self, request, decl: Idempotent, quantity: bool):
        v = Violations(DOMAIN)
        check_id(v, "chain_id", request.chain_id, required=True)
        check_id(v, "member_id", request.member_id, required=True)
        if quantity:
            v.check(request.quantity > 0, "quantity", "must be at least 1")
        decl.check(v, request)
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        return decl.call(request, convert.chain_entry_pb)

    async def JoinChain(self, request: pb.JoinChainRequest, context) -> pb.ChainEntry:
        call = self._chain_call(request, JOIN_CHAIN, True)
        return await self.uc.chains.join(request.chain_id, request.member_id, request.quantity,
                                         call)

    async def ChangeChainEntry(self, request: pb.ChangeChainEntryRequest,
                               context) -> pb.ChainEntry:
        call = self._chain_call(request, CHANGE_CHAIN_ENTRY, True)
        return await self.uc.chains.change(request.chain_id, request.member_id,
                                           request.quantity, call)

    async def WithdrawChainEntry(self, request: pb.WithdrawChainEntryRequest,
                                 context) -> pb.ChainEntry:
        call = self._chain_call(request, WITHDRAW_CHAIN_ENTRY, False)
        return await self.uc.chains.withdraw(request.chain_id, request.member_id, call)

    async def CloseChain(self, request: pb.CloseChainRequest, context) -> pb.Chain:
        _ids(("chain_id", request.chain_id))
        chain, entries = await self.uc.chains.close(request.chain_id)
        return convert.chain_pb(chain, entries)
