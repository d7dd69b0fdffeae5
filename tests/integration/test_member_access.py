"""Who may reach which member, over a real member service: the gateway acts only for
the member it verified (and signs customers in by their WeChat identities only), the
owner of an identity is told only to operators and services, and the spellings of
one identity all lead to one member."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pond.member.v1 import member_pb2 as pb

from services.member.access import AUTH_RULES, GATEWAY_BEFORE_SIGN_IN
from services.runtime.auth import Role
from tests.conftest import MemberHarness

PHONE_A, PHONE_B = "13812345678", "13900000000"
UNIONID, OPENID, WECOM = (pb.IDENTITY_KIND_WECHAT_UNIONID, pb.IDENTITY_KIND_WECHAT_OPENID,
                          pb.IDENTITY_KIND_WECOM_EXTERNAL_USERID)


def phone(value: str) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=value)


def unionid(value: str) -> pb.Identity:
    return pb.Identity(kind=UNIONID, value=value)


def openid(app_id: str, value: str) -> pb.Identity:
    return pb.Identity(kind=OPENID, value=value, app_id=app_id)


async def register(h: MemberHarness, *identities: pb.Identity, md=None) -> pb.Member:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(identities=list(identities)),
                                       metadata=md or h.md())
    return resp.member


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def names(err: grpc.aio.AioRpcError, member_id: str) -> bool:
    """Whether the error tells who `member_id` is (message or ErrorInfo metadata)."""
    return member_id in err.details() or member_id in str(dict(error_info(err).metadata))


async def member_count(h: MemberHarness) -> int:
    return len((await h.stub.ListMembers(pb.ListMembersRequest(page_size=100),
                                         metadata=h.md())).members)


# -- item: a gateway token cannot take over another member through RegisterMember --

async def test_gateway_sign_in_never_leads_to_the_owner_of_a_claimed_phone(
    member: MemberHarness,
):
    a = await register(member, unionid("u-a"), md=member.md(Role.GATEWAY))
    b = await register(member, phone(PHONE_B), unionid("u-b"))
    as_a = member.md(Role.GATEWAY, member_id=a.id)

    # The takeover: an unknown unionid with B's phone must not return B nor bind to B.
    for md in (as_a, member.md(Role.GATEWAY)):
        err = await refused(member.stub.RegisterMember(pb.RegisterMemberRequest(
            identities=[unionid("attacker"), phone(PHONE_B)]), metadata=md))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_info(err).reason == "IDENTITY_TAKEN" and not names(err, b.id)
    # Nor with A's own unionid, nor with a WeCom id (also only a claim).
    err = await refused(member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("u-a"), phone(PHONE_B)]), metadata=as_a))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and not names(err, b.id)
    await member.stub.AddMemberIdentity(pb.AddMemberIdentityRequest(
        member_id=b.id, identity=pb.Identity(kind=WECOM, value="wm-b")), metadata=member.md())
    err = await refused(member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("attacker"), pb.Identity(kind=WECOM, value="wm-b")]), metadata=as_a))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and not names(err, b.id)
    # A phone alone proves nothing for the gateway.
    err = await refused(member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone(PHONE_B)]), metadata=as_a))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and not names(err, b.id)

    # Nothing was written: B is as it was, the attacker's unionid is nobody's.
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=b.id), metadata=member.md())
    assert sorted(i.kind for i in got.identities) == sorted([pb.IDENTITY_KIND_PHONE, UNIONID,
                                                             WECOM])
    err = await refused(member.stub.FindMember(pb.FindMemberRequest(
        identity=unionid("attacker")), metadata=member.md()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await member_count(member) == 2

    # A free phone is added to the member the WeChat identities name (or a new one).
    mine = await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("u-a"), phone(PHONE_A)]), metadata=as_a)
    assert mine.member.id == a.id and not mine.created and len(mine.member.identities) == 2
    again = await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("u-a"), phone(PHONE_A)]), metadata=member.md(Role.GATEWAY))
    assert again.member.id == a.id
    # B's own WeChat identities, verified by the gateway, sign B in.
    signed_in = await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("u-b"), openid("wxMini", "o-b")]), metadata=member.md(Role.GATEWAY))
    assert signed_in.member.id == b.id and not signed_in.created
    assert signed_in.member.identities[0].value == "139****0000"


# -- item: a gateway caller without a member id reaches no member -----------------

def _gateway_requests(member_id: str, order_id: str) -> dict[str, object]:
    return {
        "GetMember": pb.GetMemberRequest(member_id=member_id),
        "UpdateMember": pb.UpdateMemberRequest(
            member=pb.Member(id=member_id, profile=pb.Profile(name="x")),
            update_mask=field_mask_pb2.FieldMask(paths=["profile.name"])),
        "AddMemberIdentity": pb.AddMemberIdentityRequest(
            member_id=member_id, identity=openid("wxOther", f"o-{member_id}")),
        "ListTierChanges": pb.ListTierChangesRequest(member_id=member_id),
        "RedeemPoints": pb.RedeemPointsRequest(member_id=member_id, points=1, reason="gift",
                                               idempotency_key=f"r-{member_id}"),
        "ListPointsEntries": pb.ListPointsEntriesRequest(member_id=member_id),
        "ListExpiringPoints": pb.ListExpiringPointsRequest(member_id=member_id, within_days=366),
        "PayWithStoredValue": pb.PayWithStoredValueRequest(
            member_id=member_id, amount_fen=1, reference="bill", idempotency_key=f"p-{member_id}"),
        "ListStoredValueEntries": pb.ListStoredValueEntriesRequest(member_id=member_id),
        "GetOrder": pb.GetOrderRequest(order_id=order_id),
        "ListOrders": pb.ListOrdersRequest(member_id=member_id),
        "BindVerifiedPhone": pb.BindVerifiedPhoneRequest(member_id=member_id,
                                                         phone="13700000000"),
    }


MEMBER_SCOPED = sorted(_gateway_requests("", ""))


def test_every_gateway_method_is_covered():
    """A method opened to the gateway must join the table above (or be sign-in)."""
    gateway = {name for name, roles in AUTH_RULES.items() if Role.GATEWAY in roles}
    assert gateway - GATEWAY_BEFORE_SIGN_IN == set(MEMBER_SCOPED)


@pytest.mark.parametrize("method", MEMBER_SCOPED)
async def test_gateway_reaches_only_the_member_it_verified(member: MemberHarness, method: str):
    a = await register(member, unionid("u-a"))
    b = await register(member, unionid("u-b"))
    recorded = await member.stub.RecordOrder(pb.RecordOrderRequest(
        order_id="o-b", member_id=b.id, channel=4, amount_fen=10_000), metadata=member.md())
    assert recorded.member.points_balance > 0
    call: Callable = getattr(member.stub, method)
    for_b = _gateway_requests(b.id, "o-b")[method]
    # No member id: refused, whether the request names B or nobody ("every member").
    for request in (for_b, _gateway_requests("", "o-b")[method]):
        err = await refused(call(request, metadata=member.md(Role.GATEWAY)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (method, err.details())
    # Acting for A: B is out of reach, and so is "every member" (refused, or invalid
    # where a member id is required).
    as_a = member.md(Role.GATEWAY, member_id=a.id)
    err = await refused(call(for_b, metadata=as_a))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (method, err.details())
    err = await refused(call(_gateway_requests("", "o-b")[method], metadata=as_a))
    assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    # Acting for B, the same request is not refused for want of permission.
    try:
        await call(for_b, metadata=member.md(Role.GATEWAY, member_id=b.id))
    except grpc.aio.AioRpcError as err:
        assert err.code() != grpc.StatusCode.PERMISSION_DENIED, (method, err.details())


async def test_gateway_needs_no_member_only_to_sign_in_and_read_the_tier_program(
    member: MemberHarness,
):
    program = await member.stub.GetTierProgram(pb.GetTierProgramRequest(),
                                               metadata=member.md(Role.GATEWAY))
    assert program.tiers
    signed_in = await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[unionid("u-new")]), metadata=member.md(Role.GATEWAY))
    assert signed_in.created


# -- item: who owns a phone is told only to operators and services ----------------

async def test_owner_of_an_identity_is_named_only_to_operators_and_services(
    member: MemberHarness,
):
    a = await register(member, phone(PHONE_A), unionid("u-a"))
    b = await register(member, phone(PHONE_B))
    add = pb.AddMemberIdentityRequest(member_id=a.id, identity=phone(PHONE_B))
    both = pb.RegisterMemberRequest(identities=[phone(PHONE_A), phone(PHONE_B)])
    for md in (member.md(Role.GUIDE), member.md(Role.GATEWAY, member_id=a.id)):
        err = await refused(member.stub.AddMemberIdentity(add, metadata=md))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_info(err).reason == "IDENTITY_TAKEN" and not names(err, b.id)
    err = await refused(member.stub.RegisterMember(both, metadata=member.md(Role.GUIDE)))
    assert error_info(err).reason == "IDENTITIES_BELONG_TO_DIFFERENT_MEMBERS"
    assert not names(err, a.id) and not names(err, b.id)
    # Operators and services are told who (message and ErrorInfo metadata).
    for role in (Role.OPERATOR, Role.SERVICE):
        err = await refused(member.stub.AddMemberIdentity(add, metadata=member.md(role)))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and b.id in err.details()
        assert error_info(err).metadata["member_id"] == b.id
        err = await refused(member.stub.RegisterMember(both, metadata=member.md(role)))
        assert error_info(err).metadata["member_ids"] == ",".join(sorted([a.id, b.id]))


# -- item: the spellings of one identity lead to one member ----------------------

FULLWIDTH = "１３８１２３４５６７８"
ARABIC_INDIC = "١٣٨١٢٣٤٥٦٧٨"
DEVANAGARI = "१३८१२३४५६७८"


async def _refused_everywhere(h: MemberHarness, member_id: str, ident: pb.Identity) -> None:
    """INVALID_ARGUMENT with a field violation from all three identity methods."""
    calls = [
        (h.stub.RegisterMember(pb.RegisterMemberRequest(identities=[ident]), metadata=h.md()),
         "identities[0]"),
        (h.stub.FindMember(pb.FindMemberRequest(identity=ident), metadata=h.md()), "identity"),
        (h.stub.AddMemberIdentity(pb.AddMemberIdentityRequest(member_id=member_id,
                                                              identity=ident), metadata=h.md()),
         "identity"),
    ]
    for call, field in calls:
        err = await refused(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (ident, err.details())
        assert field in violations(err), ident


async def test_variants_of_an_identity_resolve_to_one_member(member: MemberHarness):
    m = await register(member, phone(PHONE_A), unionid("u1"))
    # Fullwidth digits (NFKC) are the same phone; so is a fullwidth unionid.
    for ident in (phone(FULLWIDTH), phone(f"+86 {FULLWIDTH}"), unionid("ｕ１")):
        again = await member.stub.RegisterMember(
            pb.RegisterMemberRequest(identities=[ident]), metadata=member.md())
        assert again.member.id == m.id and not again.created, ident
        found = await member.stub.FindMember(pb.FindMemberRequest(identity=ident),
                                             metadata=member.md())
        assert found.id == m.id
        added = await member.stub.AddMemberIdentity(pb.AddMemberIdentityRequest(
            member_id=m.id, identity=ident), metadata=member.md())
        assert len(added.identities) == 2
    # Digits of other scripts, control characters and surrounding whitespace are refused.
    for ident in (phone(ARABIC_INDIC), phone(DEVANAGARI), phone(PHONE_A + "\n"),
                  phone("138\u200b12345678"), unionid("u1\n"), unionid(" u1"), unionid("u1 "),
                  unionid("u\x001"), openid("wxK", "o1\t"), openid(" wxK", "o1")):
        await _refused_everywhere(member, m.id, ident)
    # (app "wxK:x", openid "o1") and (app "wxK", openid "x:o1") were one lookup key:
    # ':' is refused in app ids, so a key names one (app, openid) pair.
    other = await register(member, openid("wxK", "x:o1"))
    assert other.id != m.id
    await _refused_everywhere(member, m.id, openid("wxK:x", "o1"))
    assert await member_count(member) == 2
