"""The member's points and stored value (balances and histories)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pond.member.v1 import member_pb2 as pb

from gateway import convert
from gateway.errors import problem_responses
from gateway.models import (
    ExpiringPoints,
    ExpiringPointsView,
    PointsBalance,
    PointsEntriesPage,
    StoredValueBalance,
    StoredValueEntriesPage,
)
from gateway.routes.me import Reading, ReadingMember, load_me
from gateway.routes.pages import PAGE_SIZE_DEFAULT, PageSize, PageToken
from gateway.state import Gateway

router = APIRouter(prefix="/v1/me", tags=["points and stored value"])
EXPIRING_LOTS_MAX = 100


@router.get("/points", response_model=PointsBalance, summary="My points balance",
            responses=problem_responses(401))
async def points_balance(request: Request, me: Reading) -> PointsBalance:
    member = await load_me(request.app.state.gateway, me.member_id)
    return PointsBalance(points_balance=member.points_balance)


@router.get("/points/entries", response_model=PointsEntriesPage,
            summary="My points history, newest first", responses=problem_responses(400, 401))
async def points_entries(request: Request, me: ReadingMember,
                         page_size: PageSize = PAGE_SIZE_DEFAULT,
                         page_token: PageToken = "") -> PointsEntriesPage:
    members = request.app.state.gateway.members
    reply = await members.call(members.stub.ListPointsEntries, pb.ListPointsEntriesRequest(
        member_id=me.member_id, page_size=page_size, page_token=page_token),
        member_id=me.member_id)
    return PointsEntriesPage(entries=[convert.points_entry(e) for e in reply.entries],
                             next_page_token=reply.next_page_token)


@router.get("/points/expiring", response_model=ExpiringPoints,
            summary="My points expiring soon", responses=problem_responses(400, 401))
async def points_expiring(
    request: Request, me: ReadingMember,
    within_days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> ExpiringPoints:
    gateway: Gateway = request.app.state.gateway
    members = gateway.members
    reply = await members.call(members.stub.ListExpiringPoints, pb.ListExpiringPointsRequest(
        member_id=me.member_id, within_days=within_days, page_size=EXPIRING_LOTS_MAX),
        member_id=me.member_id)
    lots = [ExpiringPointsView(points=e.points, expires_at=convert.time_of(e.expire_time))
            for e in reply.expiring]
    return ExpiringPoints(within_days=within_days, total=sum(lot.points for lot in lots),
                          lots=lots)


@router.get("/stored-value", response_model=StoredValueBalance,
            summary="My stored-value balance (fen)", responses=problem_responses(401))
async def stored_value_balance(request: Request, me: Reading) -> StoredValueBalance:
    member = await load_me(request.app.state.gateway, me.member_id)
    return StoredValueBalance(stored_value_fen=member.stored_value_fen)


@router.get("/stored-value/entries", response_model=StoredValueEntriesPage,
            summary="My stored-value history", responses=problem_responses(400, 401))
async def stored_value_entries(request: Request, me: ReadingMember,
                               page_size: PageSize = PAGE_SIZE_DEFAULT,
                               page_token: PageToken = "") -> StoredValueEntriesPage:
    members = request.app.state.gateway.members
    reply = await members.call(members.stub.ListStoredValueEntries,
                               pb.ListStoredValueEntriesRequest(
                                   member_id=me.member_id, page_size=page_size,
                                   page_token=page_token),
                               member_id=me.member_id)
    return StoredValueEntriesPage(
        entries=[convert.stored_value_entry(e) for e in reply.entries],
        next_page_token=reply.next_page_token)
