"""Sign-in with WeChat, token refresh and sign-out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pond.common.v1 import common_pb2
from pond.member.v1 import member_pb2 as pb

from gateway.auth import SignedInMember, unauthorized
from gateway.errors import problem_responses
from gateway.models import LoginResponse, RefreshRequest, TokenPair, WeChatLoginRequest
from gateway.ratelimit import admitted, signed_in
from gateway.state import Gateway
from gateway.wechat import WeChatError

router = APIRouter(prefix="/v1/auth", tags=["auth"])


async def issue_tokens(gateway: Gateway, member_id: str) -> TokenPair:
    """A new refresh family for `member_id` and its first token pair."""
    family, refresh = await gateway.sessions.start(member_id)
    return TokenPair(access_token=gateway.tokens.issue(member_id, family),
                     expires_in=gateway.tokens.ttl_seconds, refresh_token=refresh,
                     member_id=member_id)


@router.post("/wechat-login", response_model=LoginResponse,
             summary="Sign in with the code of wx.login()",
             responses=problem_responses(400, 403, 429, 502, 503))
async def wechat_login(request: Request, body: WeChatLoginRequest,
                       _: Annotated[None, Depends(admitted("auth"))]) -> LoginResponse:
    gateway: Gateway = request.app.state.gateway
    try:
        session = await gateway.wechat.code2session(body.code)
    except WeChatError as exc:
        raise exc.problem() from exc
    identities = [pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_OPENID, value=session.openid,
                              app_id=gateway.wechat.app_id)]
    if session.unionid:
        identities.append(pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_UNIONID,
                                      value=session.unionid))
    members = gateway.members
    reply = await members.call(members.stub.RegisterMember, pb.RegisterMemberRequest(
        identities=identities, acquisition_channel=common_pb2.CHANNEL_MINI_PROGRAM))
    pair = await issue_tokens(gateway, reply.member.id)
    return LoginResponse(**pair.model_dump(), created=reply.created)


@router.post("/refresh", response_model=TokenPair, summary="Rotate the refresh token",
             responses=problem_responses(401))
async def refresh(request: Request, body: RefreshRequest,
                  _: Annotated[None, Depends(admitted("auth"))]) -> TokenPair:
    gateway: Gateway = request.app.state.gateway
    rotated = await gateway.sessions.rotate(body.refresh_token)
    if rotated.outcome == "reused":
        raise unauthorized("refresh token reused: the session is revoked", "REFRESH_TOKEN_REUSED")
    if rotated.outcome != "ok":
        raise unauthorized("unknown or revoked refresh token", "REFRESH_TOKEN_INVALID")
    return TokenPair(access_token=gateway.tokens.issue(rotated.member_id, rotated.family),
                     expires_in=gateway.tokens.ttl_seconds,
                     refresh_token=rotated.refresh_token, member_id=rotated.member_id)


@router.post("/logout", status_code=204, summary="Sign out: revoke this session",
             response_class=Response, responses=problem_responses(401))
async def logout(request: Request,
                 member: Annotated[SignedInMember, Depends(signed_in("auth"))]) -> Response:
    await request.app.state.gateway.sessions.revoke(member.family)
    return Response(status_code=204)

