"""Binding the phone number WeChat verified (the getPhoneNumber button's code) to the
signed-in member; when a store membership already holds it, the two are joined by
the member service and the customer gets tokens for the surviving member."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pond.member.v1 import member_pb2 as pb

from gateway.errors import Problem, problem_responses
from gateway.models import PhoneBindRequest, PhoneBindResponse
from gateway.routes.auth import issue_tokens
from gateway.routes.me import Writing, me_view
from gateway.state import Gateway
from gateway.wechat import ACCESS_TOKEN_ERRORS, PhoneInfo, WeChatError

router = APIRouter(prefix="/v1/me", tags=["me"])


async def verified_phone(gateway: Gateway, code: str) -> PhoneInfo:
    """WeChat's phone number for `code`, with the shared server access token (renewed
    once when WeChat says it is no longer valid)."""
    token = await gateway.wechat_token.get()
    try:
        try:
            return await gateway.wechat.phone_number(token, code)
        except WeChatError as exc:
            if exc.errcode not in ACCESS_TOKEN_ERRORS:
                raise
            await gateway.wechat_token.invalidate(token)
            return await gateway.wechat.phone_number(await gateway.wechat_token.get(), code)
    except WeChatError as exc:
        raise exc.problem() from exc


@router.post("/phone", response_model=PhoneBindResponse,
             summary="Bind the phone number WeChat verified (getPhoneNumber)",
             responses=problem_responses(400, 401, 403, 409, 429, 502, 503))
async def bind_phone(request: Request, me: Writing, body: PhoneBindRequest) -> PhoneBindResponse:
    gateway: Gateway = request.app.state.gateway
    phone = await verified_phone(gateway, body.code)
    if phone.country_code not in ("86", "+86"):
        raise Problem(400, "PHONE_NOT_SUPPORTED", "only mainland China mobile numbers")
    members = gateway.members
    reply = await members.call(members.stub.BindVerifiedPhone, pb.BindVerifiedPhoneRequest(
        member_id=me.member_id, phone=phone.pure_phone_number), member_id=me.member_id)
    tokens = None
    if reply.merged:
        # The signed-in member is gone (joined into the phone's owner): its session
        # ends, and the customer carries on as the survivor.
        await gateway.sessions.revoke(me.family)
        tokens = await issue_tokens(gateway, reply.member.id)
    return PhoneBindResponse(me=await me_view(gateway, reply.member), merged=reply.merged,
                             tokens=tokens)
