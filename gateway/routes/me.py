"""The signed-in member's own profile: read it, change what a customer may change.
Always the member of the access token: no route takes a member id from the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from google.protobuf import field_mask_pb2
from pond.member.v1 import member_pb2 as pb

from gateway import convert
from gateway.auth import SignedInMember, unauthorized
from gateway.errors import problem_responses
from gateway.models import MePatch, MeView
from gateway.ratelimit import signed_in
from gateway.state import Gateway

router = APIRouter(prefix="/v1", tags=["me"])
Reading = Annotated[SignedInMember, Depends(signed_in("read"))]
Writing = Annotated[SignedInMember, Depends(signed_in("write"))]


async def load_me(gateway: Gateway, member_id: str) -> pb.Member:
    """The member, as long as it is still one (a member merged into another, e.g. on a
    second phone, must sign in again to become the survivor)."""
    members = gateway.members
    member: pb.Member = await members.call(
        members.stub.GetMember, pb.GetMemberRequest(member_id=member_id), member_id=member_id)
    if member.merged_into:
        raise unauthorized("this membership was joined with another: sign in again",
                           "MEMBER_MERGED")
    return member


def still_a_member(route_class: str) -> Callable[..., Awaitable[SignedInMember]]:
    """The signed-in member, still one: a member merged into another (a phone bound on
    another device, an operator's merge) is 401 MEMBER_MERGED, so that nothing is
    written under an id the merge has moved, and no list shows the (now empty)
    history of that id as if it were the customer's."""

    admitted = Depends(signed_in(route_class))  # a default: the annotations are strings

    async def dependency(request: Request, me: SignedInMember = admitted) -> SignedInMember:
        await load_me(request.app.state.gateway, me.member_id)
        return me

    return dependency


# For routes that do not read the member themselves (lists, community calls).
ReadingMember = Annotated[SignedInMember, Depends(still_a_member("read"))]
WritingMember = Annotated[SignedInMember, Depends(still_a_member("write"))]


async def me_view(gateway: Gateway, member: pb.Member) -> MeView:
    return convert.me(member, await gateway.program())


@router.get("/me", response_model=MeView, summary="My profile, tier, balances",
            responses=problem_responses(401))
async def get_me(request: Request, me: Reading) -> MeView:
    gateway: Gateway = request.app.state.gateway
    member, program = await asyncio.gather(load_me(gateway, me.member_id), gateway.program())
    return convert.me(member, program)


@router.patch("/me", response_model=MeView,
              summary="Change my nickname, birthday (once) or marketing consents",
              responses=problem_responses(400, 401, 409))
async def patch_me(request: Request, me: Writing, body: MePatch) -> MeView:
    gateway: Gateway = request.app.state.gateway
    update = pb.Member(id=me.member_id)
    paths = []
    if body.nickname is not None:
        update.profile.nickname = body.nickname
        paths.append("profile.nickname")
    if body.birthday is not None:
        update.profile.birthday = body.birthday.isoformat()
        paths.append("profile.birthday")
    if body.consents is not None:
        # The service updates consents per channel: the channels not named keep theirs
        # (no read here, so two changes of different channels at once both hold).
        wanted = {convert.contact_channel_number(c.channel): c.granted for c in body.consents}
        update.consents.extend(pb.Consent(channel=ch, granted=g)
                               for ch, g in sorted(wanted.items()))
        paths.append("consents")
    members = gateway.members
    if not paths:
        return await me_view(gateway, await load_me(gateway, me.member_id))
    member = await members.call(
        members.stub.UpdateMember,
        pb.UpdateMemberRequest(member=update,
                               update_mask=field_mask_pb2.FieldMask(paths=paths)),
        member_id=me.member_id,
    )
    return await me_view(gateway, member)
