"""The member's customer groups (社群) through the community service: my groups, joining
through a live code (活码), the daily check-in (签到) and chain orders (接龙).

Always the member of the access token: no route takes a member id, and the entry
routes name only `me`, so no id a client sends reaches another member's entry. A
chain's details are the chain's (anyone with its link sees product, price, stock and
deadline) plus my own entry, never the others'.

Status codes: a live-code join is 200 (the group, joined now or before); a check-in is
201 when it is today's first and 200 with the first one's answer when it was made
already; joining a chain is 201 (a replay of its Idempotency-Key answers the first
entry again); changing and withdrawing are 200 with the entry. The rules' refusals
keep the community service's reason as `code`: 409 ENTRY_TIER_TOO_LOW,
ENTRY_PURCHASE_REQUIRED, ENTRY_SEGMENT_REQUIRED, ENTRY_FEE_REQUIRED (paid groups are
not joined here: the payment check is the order system's), POOL_FULL, GROUP_FULL,
RULE_DISABLED, NOT_IN_GROUP, CHAIN_OVER_STOCK, CHAIN_MEMBER_LIMIT,
CHAIN_DEADLINE_PASSED, CHAIN_CLOSED, CHAIN_ALREADY_JOINED; 404 ROUTING_RULE_NOT_FOUND,
CHAIN_NOT_FOUND, CHAIN_ENTRY_NOT_FOUND, GROUP_NOT_FOUND."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Request, Response
from pond.community.v1 import community_pb2 as pb

from gateway import convert
from gateway.errors import Problem, problem_responses
from gateway.idempotency import KEY_RE, ValueMovingKey
from gateway.models import (
    ChainEntryView,
    ChainQuantity,
    ChainView,
    CheckInRequestBody,
    CheckInStreakView,
    CheckInView,
    LiveCodeContext,
    LiveCodeJoined,
    MyGroupsPage,
)
from gateway.routes.me import ReadingMember as Reading
from gateway.routes.me import WritingMember as Writing
from gateway.routes.pages import PAGE_SIZE_DEFAULT, PageSize, PageToken
from gateway.state import Gateway
from services.runtime.errors import FailedPrecondition

router = APIRouter(prefix="/v1", tags=["community"])
_ID = dict(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
RuleId = Annotated[str, Path(**_ID, description="The live code's routing rule",
                             openapi_examples={"live code": {"value": "fruit-club"}})]
ChainId = Annotated[str, Path(**_ID, openapi_examples={"chain": {"value": "cherries-0301"}})]
ENTRY_NOT_FOUND = "CHAIN_ENTRY_NOT_FOUND"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# -- my groups --
@router.get("/me/groups", response_model=MyGroupsPage,
            summary="My groups: name, kind, level and QR code of each",
            responses=problem_responses(400, 401, 503))
async def list_my_groups(request: Request, me: Reading, page_size: PageSize = PAGE_SIZE_DEFAULT,
                         page_token: PageToken = "") -> MyGroupsPage:
    community = _gateway(request).community
    reply = await community.call(community.stub.ListMemberGroups, pb.ListMemberGroupsRequest(
        member_id=me.member_id, page_size=page_size, page_token=page_token),
        member_id=me.member_id)
    groups = await asyncio.gather(*(community.call(
        community.stub.GetGroup, pb.GetGroupRequest(group_id=m.group_id),
        member_id=me.member_id) for m in reply.memberships))
    return MyGroupsPage(groups=[convert.my_group(g, m)
                                for g, m in zip(groups, reply.memberships, strict=True)],
                        next_page_token=reply.next_page_token)


# -- live codes --
@router.post("/live-codes/{rule_id}/join", response_model=LiveCodeJoined,
             summary="Join a group through a live code: the group with room for me, and its "
                     "QR code (scanning again answers the same group)",
             responses=problem_responses(400, 401, 404, 409, 503))
async def join_through_live_code(
    request: Request, me: Writing, rule_id: RuleId,
    context: Annotated[LiveCodeContext | None, Body()] = None,
) -> LiveCodeJoined:
    community = _gateway(request).community
    context = context or LiveCodeContext()
    routed = await community.call(community.stub.RouteMember, pb.RouteMemberRequest(
        member_id=me.member_id, rule_id=rule_id, store_id=context.store_id or "",
        city=context.city or ""), member_id=me.member_id)
    return LiveCodeJoined(group=convert.group(routed.group), qr_code_url=routed.qr_code_url,
                          already_member=routed.already_member, first_join=routed.first_join)


# -- check-in --
@router.post("/check-ins", response_model=CheckInView, status_code=201,
             summary="Check in today (201); again the same day answers the first (200)",
             responses={200: {"model": CheckInView,
                              "description": "Checked in already today: the first check-in"},
                        **problem_responses(400, 401, 404, 409, 503)})
async def check_in(request: Request, response: Response, me: Writing,
                   body: Annotated[CheckInRequestBody | None, Body()] = None) -> CheckInView:
    community = _gateway(request).community
    reply = await community.call(community.stub.CheckIn, pb.CheckInRequest(
        member_id=me.member_id, group_id=(body.group_id or "") if body else ""),
        member_id=me.member_id)
    if reply.already_checked_in:
        response.status_code = 200
    return convert.check_in(reply.check_in, reply.already_checked_in)


@router.get("/me/check-in-streak", response_model=CheckInStreakView,
            summary="My check-in streak, best streak and total days",
            responses=problem_responses(401, 503))
async def get_check_in_streak(request: Request, me: Reading) -> CheckInStreakView:
    community = _gateway(request).community
    streak = await community.call(community.stub.GetCheckInStreak, pb.GetCheckInStreakRequest(
        member_id=me.member_id), member_id=me.member_id)
    return convert.check_in_streak(streak)


# -- chains --
@router.get("/chains/{chain_id}", response_model=ChainView,
            summary="A chain order: product, price (fen), stock left, per-member limit, "
                    "deadline and my entry", responses=problem_responses(401, 404, 503))
async def get_chain(request: Request, me: Reading, chain_id: ChainId) -> ChainView:
    community = _gateway(request).community
    chain = await community.call(community.stub.GetChain, pb.GetChainRequest(chain_id=chain_id),
                                 member_id=me.member_id)
    # The service shows the gateway only its member's entry; the view takes only mine too.
    return convert.chain(chain, me.member_id)


@router.post("/chains/{chain_id}/entries", response_model=ChainEntryView, status_code=201,
             summary="Join a chain with a quantity (Idempotency-Key required)",
             responses=problem_responses(400, 401, 404, 409, 503))
async def join_chain(request: Request, me: Writing, key: ValueMovingKey, chain_id: ChainId,
                     body: ChainQuantity) -> ChainEntryView:
    community = _gateway(request).community
    entry = await community.call(community.stub.JoinChain, pb.JoinChainRequest(
        chain_id=chain_id, member_id=me.member_id, quantity=body.quantity,
        idempotency_key=key), member_id=me.member_id)
    return convert.chain_entry(entry)


def _optional_key(member_id: str, key: str | None) -> str:
    """PATCH and DELETE are idempotent by meaning (a quantity set, an entry withdrawn):
    an Idempotency-Key is optional there; with one a retry replays the first answer,
    without one the gateway makes a key of its own for the service."""
    if key is None:
        return f"{member_id}:gw-{uuid.uuid4().hex}"
    if not KEY_RE.fullmatch(key):
        raise Problem(400, "INVALID_ARGUMENT", "Idempotency-Key: 8-64 of A-Z a-z 0-9 _ -",
                      violations=[("Idempotency-Key", "8-64 of A-Z a-z 0-9 _ -")])
    return f"{member_id}:{key}"


OptionalKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="Optional: with one, a retry replays the first answer")]


async def _my_entry_call(call: Callable[[], Awaitable[pb.ChainEntry]]) -> ChainEntryView:
    """My entry after `call`; no entry of mine (never made, or withdrawn) is 404."""
    try:
        return convert.chain_entry(await call())
    except FailedPrecondition as exc:
        if exc.reason == ENTRY_NOT_FOUND:
            raise Problem(404, ENTRY_NOT_FOUND, "I have no entry in this chain") from exc
        raise


@router.patch("/chains/{chain_id}/entries/me", response_model=ChainEntryView,
              summary="Change my quantity in a chain",
              responses=problem_responses(400, 401, 404, 409, 503))
async def change_my_chain_entry(request: Request, me: Writing, chain_id: ChainId,
                                body: ChainQuantity, key: OptionalKey = None) -> ChainEntryView:
    community = _gateway(request).community
    return await _my_entry_call(lambda: community.call(
        community.stub.ChangeChainEntry, pb.ChangeChainEntryRequest(
            chain_id=chain_id, member_id=me.member_id, quantity=body.quantity,
            idempotency_key=_optional_key(me.member_id, key)), member_id=me.member_id))


@router.delete("/chains/{chain_id}/entries/me", response_model=ChainEntryView,
               summary="Withdraw my entry from a chain (the entry, now withdrawn)",
               responses=problem_responses(400, 401, 404, 409, 503))
async def withdraw_my_chain_entry(request: Request, me: Writing, chain_id: ChainId,
                                  key: OptionalKey = None) -> ChainEntryView:
    community = _gateway(request).community
    return await _my_entry_call(lambda: community.call(
        community.stub.WithdrawChainEntry, pb.WithdrawChainEntryRequest(
            chain_id=chain_id, member_id=me.member_id,
            idempotency_key=_optional_key(me.member_id, key)), member_id=me.member_id))
