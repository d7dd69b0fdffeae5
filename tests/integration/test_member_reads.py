"""GetMember and FindMember answer an unchanged member without converting it again
(the member object kept per stored version, its conversions per caller's phone
visibility, decrypted phones by ciphertext): these tests hold that a read after any
change, by this process or by another replica over the same database, shows the
change, and that each caller sees phones as their role may."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio
from google.protobuf import field_mask_pb2
from pond.member.v1 import member_pb2 as pb

from services.runtime.auth import Role
from tests.conftest import MemberHarness, member_replicas

PHONE, OTHER_PHONE = "13812345678", "13987654321"


def phone(value: str = PHONE) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=value)


async def register(h: MemberHarness, number: str = PHONE) -> pb.Member:
    resp = await h.stub.RegisterMember(
        pb.RegisterMemberRequest(identities=[phone(number)]), metadata=h.md())
    return resp.member


async def get(h: MemberHarness, member_id: str, role: Role = Role.OPERATOR) -> pb.Member:
    md = h.md(role, member_id=member_id if role is Role.GATEWAY else "")
    return await h.stub.GetMember(pb.GetMemberRequest(member_id=member_id), metadata=md)


async def rename(h: MemberHarness, member_id: str, name: str) -> None:
    await h.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(id=member_id, profile=pb.Profile(name=name)),
        update_mask=field_mask_pb2.FieldMask(paths=["profile.name"])), metadata=h.md())


async def test_a_member_read_again_shows_every_change_since(member: MemberHarness):
    m = await register(member)
    first = await get(member, m.id)
    assert await get(member, m.id) == first  # read twice unchanged: the same answer

    await rename(member, m.id, "王小明")
    assert (await get(member, m.id)).profile.name == "王小明"

    await member.stub.RecordOrder(pb.RecordOrderRequest(
        order_id="o-1", member_id=m.id, channel=4, amount_fen=12_300,
        items=[pb.OrderItem(sku="tea", quantity=1, unit_price_fen=12_300)]),
        metadata=member.md())
    after_order = await get(member, m.id)
    assert after_order.points_balance == 123 and after_order.paid_order_count == 1
    assert after_order.kind == pb.MEMBER_KIND_CONSUMING

    await member.stub.AddMemberIdentity(pb.AddMemberIdentityRequest(
        member_id=m.id, identity=pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_UNIONID,
                                             value="oU-reads")), metadata=member.md())
    assert [i.value for i in (await get(member, m.id)).identities] == [PHONE, "oU-reads"]
    found = await member.stub.FindMember(pb.FindMemberRequest(identity=phone()),
                                         metadata=member.md())
    assert found == await get(member, m.id) and found.profile.name == "王小明"


async def test_a_lapsed_paid_membership_shows_without_a_write(member: MemberHarness):
    m = await register(member)
    req = pb.SetPaidMembershipRequest(member_id=m.id, idempotency_key="sub-1")
    req.paid_until.FromDatetime(member.clock.now() + timedelta(days=30))
    await member.stub.SetPaidMembership(req, metadata=member.md())
    assert (await get(member, m.id)).kind == pb.MEMBER_KIND_PAID
    member.clock.advance(days=31)  # nothing stored changes: the read derives the kind
    assert (await get(member, m.id)).kind == pb.MEMBER_KIND_REGISTERED


async def test_each_caller_sees_phones_as_its_role_may(member: MemberHarness):
    a, b = await register(member), await register(member, OTHER_PHONE)
    for _ in range(2):  # the second round is answered from what the first kept
        assert (await get(member, a.id)).identities[0].value == PHONE
        assert (await get(member, a.id, Role.GUIDE)).identities[0].value == "138****5678"
        assert (await get(member, a.id, Role.GATEWAY)).identities[0].value == "138****5678"
        assert (await get(member, b.id)).identities[0].value == OTHER_PHONE
        assert (await get(member, b.id, Role.GUIDE)).identities[0].value == "139****4321"


async def test_a_renamed_tier_shows_on_the_next_read(member: MemberHarness):
    m = await register(member)
    assert (await get(member, m.id)).tier_name != "新客"
    program = await member.stub.GetTierProgram(pb.GetTierProgramRequest(), metadata=member.md())
    program.tiers[0].name = "新客"
    await member.stub.UpdateTierProgram(pb.UpdateTierProgramRequest(program=program),
                                        metadata=member.md())
    assert (await get(member, m.id)).tier_name == "新客"


@pytest_asyncio.fixture
async def two_replicas(tmp_path, redis_url: str, redis) -> AsyncIterator[list[MemberHarness]]:
    """Two member services (each with its own process-local state) over one database."""
    async with member_replicas(tmp_path, redis_url, 2) as harnesses:
        yield harnesses


async def test_a_change_made_by_another_replica_shows_on_the_next_read(two_replicas):
    a, b = two_replicas
    m = await register(a)
    assert (await get(a, m.id)).profile.name == ""
    assert (await get(a, m.id)).profile.name == ""
    await rename(b, m.id, "李雷")
    assert (await get(a, m.id)).profile.name == "李雷"
    await b.stub.BindVerifiedPhone(pb.BindVerifiedPhoneRequest(
        member_id=m.id, phone=OTHER_PHONE), metadata=b.md())
    assert OTHER_PHONE in [i.value for i in (await get(a, m.id)).identities]
