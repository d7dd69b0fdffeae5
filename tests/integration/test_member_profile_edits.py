"""What a customer edits of their own profile through the gateway: a nickname
(checked), and a birthday set once (operators may still correct it)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from pond.member.v1 import member_pb2 as pb

from services.runtime.auth import Role
from services.runtime.errors import error_details
from tests.conftest import MemberHarness


async def customer(h: MemberHarness) -> pb.Member:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(identities=[pb.Identity(
        kind=pb.IDENTITY_KIND_WECHAT_UNIONID, value="u-1")]), metadata=h.md(Role.GATEWAY))
    return resp.member


def edit(h: MemberHarness, member_id: str, paths: list[str], md=None, **profile):
    return h.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(id=member_id, profile=pb.Profile(**profile)),
        update_mask=field_mask_pb2.FieldMask(paths=paths)),
        metadata=md or h.md(Role.GATEWAY, member_id=member_id))


async def refused(call) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return (info.value.code(), *error_details(info.value))


async def test_customer_sets_a_nickname(member: MemberHarness):
    m = await customer(member)
    done = await edit(member, m.id, ["profile.nickname"], nickname=" ｐｏｎｄ小鱼 ")
    assert done.profile.nickname == "pond小鱼"  # NFKC, trimmed
    for bad in ("x" * 33, "a\u200bb", "tab\there"):
        code, _reason, violations = await refused(
            edit(member, m.id, ["profile.nickname"], nickname=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations] == ["member.profile.nickname"], bad
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=m.id),
                                      metadata=member.md())
    assert got.profile.nickname == "pond小鱼"


async def test_birthday_is_set_once_by_the_customer(member: MemberHarness):
    m = await customer(member)
    first = await edit(member, m.id, ["profile.birthday"], birthday="1990-05-01")
    assert first.profile.birthday == "1990-05-01"
    same = await edit(member, m.id, ["profile.birthday"], birthday="1990-05-01")
    assert same.profile.birthday == "1990-05-01"  # no change is no second setting
    for paths, fields in ((["profile.birthday"], {"birthday": "1991-01-01"}),
                          (["profile"], {"nickname": "x"})):  # the whole profile clears it
        code, reason, _ = await refused(edit(member, m.id, paths, **fields))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BIRTHDAY_ALREADY_SET")
    # An operator corrects it.
    fixed = await edit(member, m.id, ["profile.birthday"], md=member.md(),
                       birthday="1991-01-01")
    assert fixed.profile.birthday == "1991-01-01"
