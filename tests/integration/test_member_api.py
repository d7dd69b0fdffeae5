"""The member service over a real grpc.aio server: every RPC, its errors, auth,
health and reflection."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pond.events.v1 import event_pb2
from pond.member.v1 import member_pb2 as pb

from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from services.runtime.errors import error_details
from tests.conftest import MemberHarness, eventually, token

PHONE = "13812345678"


def phone(value: str = PHONE) -> pb.Identity:
    return pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=value)


async def register(h: MemberHarness, *identities: pb.Identity, **fields) -> pb.Member:
    resp = await h.stub.RegisterMember(
        pb.RegisterMemberRequest(identities=list(identities) or [phone()], **fields),
        metadata=h.md())
    return resp.member


async def fails(call, code: grpc.StatusCode, reason: str = "") -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    got_reason, violations = error_details(info.value)
    if reason:
        assert got_reason == reason
    return violations


async def order(h: MemberHarness, member_id: str, order_id: str, fen: int, **extra):
    return await h.stub.RecordOrder(pb.RecordOrderRequest(
        order_id=order_id, member_id=member_id, channel=4, amount_fen=fen,
        items=[pb.OrderItem(sku="cleanser", category="skincare", quantity=1,
                            unit_price_fen=fen)], **extra), metadata=h.md())


# -- members ---------------------------------------------------------------

async def test_register_is_get_or_create_and_masks_phone_for_guides(member: MemberHarness):
    first = await h_register(member)
    again = await member.stub.RegisterMember(
        pb.RegisterMemberRequest(identities=[phone("+86 138-1234-5678")]), metadata=member.md())
    assert again.created is False and again.member.id == first.id
    assert first.identities[0].value == PHONE  # operator sees the number
    as_guide = await member.stub.GetMember(pb.GetMemberRequest(member_id=first.id),
                                           metadata=member.md(Role.GUIDE))
    assert as_guide.identities[0].value == "138****5678"


async def h_register(h: MemberHarness) -> pb.Member:
    resp = await h.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone()], profile=pb.Profile(name="王小明", birthday="1990-05-01"),
        store_id="s1", guide_id="g1", acquisition_channel=4), metadata=h.md())
    assert resp.created
    return resp.member


async def test_register_binds_new_identities_and_rejects_split_identities(member: MemberHarness):
    a = await register(member, phone())
    unionid = pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_UNIONID, value="u-1")
    both = await member.stub.RegisterMember(
        pb.RegisterMemberRequest(identities=[phone(), unionid]), metadata=member.md())
    assert both.member.id == a.id and len(both.member.identities) == 2
    b = await register(member, phone("13900000000"))
    v = await fails(member.stub.RegisterMember(
        pb.RegisterMemberRequest(identities=[phone("13900000000"), unionid]),
        metadata=member.md()), grpc.StatusCode.ALREADY_EXISTS,
        "IDENTITIES_BELONG_TO_DIFFERENT_MEMBERS")
    assert v == []
    # Binding an identity that belongs to someone else names the owner.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await member.stub.AddMemberIdentity(
            pb.AddMemberIdentityRequest(member_id=b.id, identity=unionid), metadata=member.md())
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and a.id in info.value.details()
    found = await member.stub.FindMember(pb.FindMemberRequest(identity=unionid),
                                         metadata=member.md())
    assert found.id == a.id


async def test_register_rejects_bad_input_with_field_violations(member: MemberHarness):
    v = await fails(member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone("12345"), pb.Identity(kind=pb.IDENTITY_KIND_WECHAT_OPENID, value="o1")],
        profile=pb.Profile(birthday="1990-13-01"), acquisition_channel=99),
        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    fields = {f for f, _ in v}
    assert {"identities[0]", "identities[1]", "profile.birthday", "acquisition_channel"} <= fields
    await fails(member.stub.RegisterMember(pb.RegisterMemberRequest(), metadata=member.md()),
                grpc.StatusCode.INVALID_ARGUMENT)
    # Nothing was written.
    listed = await member.stub.ListMembers(pb.ListMembersRequest(), metadata=member.md())
    assert list(listed.members) == []


async def test_a_birthday_in_the_future_is_refused(member: MemberHarness):
    """Operators correct birthdays (the customer sets it once): not to a day that has
    not come yet, anywhere (the harness's clock reads 1 March 2026)."""
    m = (await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone()]), metadata=member.md())).member
    v = await fails(member.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(id=m.id, profile=pb.Profile(birthday="2026-06-01")),
        update_mask=field_mask_pb2.FieldMask(paths=["profile.birthday"])),
        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert v == [("member.profile.birthday", "is in the future")]
    v = await fails(member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone("13900000001")], profile=pb.Profile(birthday="2027-01-01")),
        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert v == [("profile.birthday", "is in the future")]
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=m.id), metadata=member.md())
    assert got.profile.birthday == ""


async def test_consents_update_per_channel_and_concurrent_changes_both_hold(
        member: MemberHarness):
    """UpdateMember's consents are per channel: the channels not named keep their
    decision, so a customer turning SMS off while WeChat is turned on (two calls at
    once) ends with both decisions, not the last call's list."""
    m = (await member.stub.RegisterMember(pb.RegisterMemberRequest(
        identities=[phone()]), metadata=member.md())).member
    mask = field_mask_pb2.FieldMask(paths=["consents"])

    def update(channel: int, granted: bool):
        return member.stub.UpdateMember(pb.UpdateMemberRequest(
            member=pb.Member(id=m.id, consents=[pb.Consent(channel=channel, granted=granted)]),
            update_mask=mask), metadata=member.md())

    await update(1, True)  # SMS on
    await asyncio.gather(update(1, False), update(2, True), update(4, True))
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=m.id), metadata=member.md())
    assert {c.channel: c.granted for c in got.consents} == {1: False, 2: True, 4: True}


async def test_get_find_unknown_member_is_not_found(member: MemberHarness):
    await fails(member.stub.GetMember(pb.GetMemberRequest(member_id="nope"), metadata=member.md()),
                grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    await fails(member.stub.FindMember(pb.FindMemberRequest(identity=phone()),
                                       metadata=member.md()), grpc.StatusCode.NOT_FOUND)


async def test_list_members_filters_and_pages(member: MemberHarness):
    ids = []
    for i in range(7):
        m = await register(member, phone(f"1390000000{i}"), store_id="s1" if i % 2 else "s2",
                           acquisition_channel=5)
        ids.append(m.id)
    seen, token_ = [], ""
    while True:
        page = await member.stub.ListMembers(
            pb.ListMembersRequest(page_size=2, page_token=token_, store_id="s1"),
            metadata=member.md())
        seen += [m.id for m in page.members]
        token_ = page.next_page_token
        if not token_:
            break
    assert seen == [ids[i] for i in range(7) if i % 2]
    by_tier = await member.stub.ListMembers(pb.ListMembersRequest(tier_level=1),
                                            metadata=member.md())
    assert list(by_tier.members) == []
    await fails(member.stub.ListMembers(pb.ListMembersRequest(page_size=501),
                                        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(member.stub.ListMembers(pb.ListMembersRequest(page_token="garbage!"),
                                        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT)


async def test_update_member_with_field_mask_and_events(member: MemberHarness, redis):
    m = await register(member)
    updated = await member.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(id=m.id, profile=pb.Profile(city="杭州", name="ignored"),
                         store_id="s9", co_branded=True),
        update_mask=field_mask_pb2.FieldMask(paths=["profile.city", "store_id", "co_branded"])),
        metadata=member.md())
    assert updated.profile.city == "杭州" and updated.profile.name == ""
    assert updated.store_id == "s9" and updated.kind == pb.MEMBER_KIND_CO_BRANDED
    v = await fails(member.stub.UpdateMember(pb.UpdateMemberRequest(
        member=pb.Member(id=m.id), update_mask=field_mask_pb2.FieldMask(paths=["points_balance"])),
        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT)
    assert v[0][0] == "update_mask"
    types = await wait_for_event_types(redis, {"pond.events.v1.MemberUpdated"})
    assert "pond.events.v1.MemberRegistered" in types


async def wait_for_event_types(redis, wanted: set[str], timeout: float = 5.0) -> list[str]:
    async def types() -> list[str]:
        return [event_pb2.Event.FromString(fields[b"e"]).type
                for _id, fields in await redis.xrange("pond.events.member")]

    return await eventually(types, lambda got: wanted <= set(got), timeout)


async def test_paid_membership_lapses_back(member: MemberHarness):
    m = await register(member)
    until = member.clock.now() + timedelta(days=30)
    req = pb.SetPaidMembershipRequest(member_id=m.id, idempotency_key="sub-1")
    req.paid_until.FromDatetime(until)
    paid = await member.stub.SetPaidMembership(req, metadata=member.md())
    assert paid.kind == pb.MEMBER_KIND_PAID
    member.clock.advance(days=31)
    lapsed = await member.stub.GetMember(pb.GetMemberRequest(member_id=m.id), metadata=member.md())
    assert lapsed.kind == pb.MEMBER_KIND_REGISTERED
    assert await member.service.app.lapse_paid_memberships() == 1
    await fails(member.stub.SetPaidMembership(
        pb.SetPaidMembershipRequest(member_id=m.id), metadata=member.md()),
        grpc.StatusCode.INVALID_ARGUMENT)


# -- orders, points, tiers -------------------------------------------------

async def test_record_order_earns_points_growth_kind_and_replays(member: MemberHarness):
    m = await register(member)
    first = await order(member, m.id, "o-1", 12_345)
    assert first.replayed is False
    assert first.order.points_earned == 123 and first.order.growth_earned == 123
    assert first.member.points_balance == 123 and first.member.paid_order_count == 1
    assert first.member.kind == pb.MEMBER_KIND_CONSUMING
    replay = await order(member, m.id, "o-1", 12_345)
    assert replay.replayed is True and replay.member.points_balance == 123
    await fails(order(member, m.id, "o-1", 99_999), grpc.StatusCode.FAILED_PRECONDITION,
                "IDEMPOTENCY_KEY_REUSED")
    got = await member.stub.GetOrder(pb.GetOrderRequest(order_id="o-1"), metadata=member.md())
    assert got.amount_fen == 12_345 and got.items[0].category == "skincare"


async def test_record_order_bad_input(member: MemberHarness):
    m = await register(member)
    v = await fails(member.stub.RecordOrder(pb.RecordOrderRequest(
        order_id="", member_id=m.id, channel=0, amount_fen=-5,
        items=[pb.OrderItem(sku="", quantity=0)]), metadata=member.md()),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert {"order_id", "channel", "amount_fen", "items[0].sku", "items[0].quantity"} <= {
        f for f, _ in v}
    await fails(order(member, "ghost", "o-x", 100), grpc.StatusCode.NOT_FOUND)


async def test_record_order_items_at_and_past_each_bound(member: MemberHarness):
    """Each item bound, exactly at it and one past it: the good items pass, each bad
    one is named by its path (the handler checks all of an item at once first and
    spells out the paths only for a bad one)."""
    m = await register(member)
    edge = pb.OrderItem(sku="s" * 128, category="c" * 64, quantity=1_000_000,
                        unit_price_fen=0)
    ok = await member.stub.RecordOrder(pb.RecordOrderRequest(
        order_id="o-edge", member_id=m.id, channel=1, amount_fen=100,
        items=[edge, pb.OrderItem(sku="x", quantity=1, unit_price_fen=10**10)]),
        metadata=member.md())
    assert [i.sku for i in ok.order.items] == ["s" * 128, "x"]
    past = {
        "items[1].sku": {"sku": ""}, "items[2].sku": {"sku": "s" * 129},
        "items[3].category": {"category": "c" * 65}, "items[4].quantity": {"quantity": 0},
        "items[5].quantity": {"quantity": 1_000_001},
        "items[6].unit_price_fen": {"unit_price_fen": -1},
        "items[7].unit_price_fen": {"unit_price_fen": 10**10 + 1},
    }
    good = {"sku": "g", "category": "", "quantity": 1, "unit_price_fen": 1}
    items = [pb.OrderItem(**good)] + [pb.OrderItem(**{**good, **bad}) for bad in past.values()]
    v = await fails(member.stub.RecordOrder(pb.RecordOrderRequest(
        order_id="o-past", member_id=m.id, channel=1, amount_fen=100, items=items),
        metadata=member.md()), grpc.StatusCode.INVALID_ARGUMENT)
    assert {f for f, _ in v} == set(past)


async def test_tier_upgrade_multiplier_and_reevaluation(member: MemberHarness):
    m = await register(member)
    resp = await order(member, m.id, "big", 150_000)  # 1500 growth -> silver (1000)
    assert resp.member.tier_level == 1 and resp.member.tier_name.startswith("银卡")
    second = await order(member, m.id, "next", 10_000)  # 100 yuan at 1.1x
    assert second.order.points_earned == 110
    changes = await member.stub.ListTierChanges(pb.ListTierChangesRequest(member_id=m.id),
                                                metadata=member.md())
    assert [(c.from_level, c.to_level) for c in changes.changes] == [(0, 1)]
    # Within the retention window nothing moves; after the evaluation window the
    # growth has aged out and, retention passed, the member moves down.
    kept = await member.stub.EvaluateTiers(pb.EvaluateTiersRequest(), metadata=member.md())
    assert (kept.members_evaluated, kept.members_downgraded) == (1, 0)
    member.clock.advance(days=400)
    moved = await member.stub.EvaluateTiers(pb.EvaluateTiersRequest(), metadata=member.md())
    assert moved.members_downgraded == 1
    after = await member.stub.GetMember(pb.GetMemberRequest(member_id=m.id), metadata=member.md())
    assert after.tier_level == 0


async def test_tier_program_update_and_fifth_tier_rejected(member: MemberHarness):
    program = await member.stub.GetTierProgram(pb.GetTierProgramRequest(), metadata=member.md())
    assert len(program.tiers) == 4
    five = pb.TierProgram(evaluation_window_days=365, retention_days=30, tiers=[
        pb.Tier(level=i, name=f"T{i}", growth_threshold=i * 100, points_multiplier_permille=1000)
        for i in range(5)])
    v = await fails(member.stub.UpdateTierProgram(pb.UpdateTierProgramRequest(program=five),
                                                  metadata=member.md()),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert v[0][0] == "program.tiers"
    two = pb.TierProgram(evaluation_window_days=180, retention_days=0, tiers=[
        pb.Tier(level=0, name="普通", points_multiplier_permille=1000),
        pb.Tier(level=1, name="VIP", growth_threshold=50, points_multiplier_permille=2000,
                benefits={"free_shipping": "true"})])
    saved = await member.stub.UpdateTierProgram(pb.UpdateTierProgramRequest(program=two),
                                                metadata=member.md())
    assert [t.name for t in saved.tiers] == ["普通", "VIP"]
    m = await register(member)
    resp = await order(member, m.id, "o", 6_000)
    assert resp.member.tier_level == 1 and resp.member.tier_name == "VIP"
    await fails(member.stub.UpdateTierProgram(pb.UpdateTierProgramRequest(program=two),
                                              metadata=member.md(Role.GUIDE)),
                grpc.StatusCode.PERMISSION_DENIED)


async def test_birthday_gifts_once_a_year_by_tier(member: MemberHarness):
    # The harness clock: 2026-03-01 10:00 in Asia/Shanghai.
    def born(day: str) -> dict:
        return {"profile": pb.Profile(birthday=day)}

    silver = await register(member, phone("13800000001"), **born("1990-03-01"))
    entry = await register(member, phone("13800000002"), **born("1991-03-01"))
    tomorrow = await register(member, phone("13800000003"), **born("1990-03-02"))
    for m in (silver, tomorrow):
        await order(member, m.id, f"o-{m.id}", 100_000)  # 1,000 growth: Silver, 100-point gift
    before = (await member.stub.GetMember(pb.GetMemberRequest(member_id=silver.id),
                                          metadata=member.md())).points_balance

    gifts = await member.stub.GrantBirthdayGifts(pb.GrantBirthdayGiftsRequest(),
                                                 metadata=member.md(Role.SERVICE))
    # The entry tier has no gift; tomorrow's birthday is tomorrow.
    assert (gifts.members_gifted, gifts.points_granted) == (1, 100)
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=silver.id),
                                      metadata=member.md())
    assert got.points_balance == before + 100
    entries = await member.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(member_id=silver.id), metadata=member.md())
    gift = entries.entries[0]
    assert (gift.kind, gift.delta, gift.reason) == (pb.POINTS_ENTRY_KIND_GIFT, 100,
                                                     "birthday gift 2026")
    # Once a year: the nightly job running again (or twice) gives nothing more.
    again = await member.stub.GrantBirthdayGifts(pb.GrantBirthdayGiftsRequest(),
                                                 metadata=member.md())
    assert (again.members_gifted, again.points_granted) == (0, 0)
    for m in (entry, tomorrow):
        other = await member.stub.ListPointsEntries(
            pb.ListPointsEntriesRequest(member_id=m.id), metadata=member.md())
        assert all(e.kind != pb.POINTS_ENTRY_KIND_GIFT for e in other.entries)
    await fails(member.stub.GrantBirthdayGifts(pb.GrantBirthdayGiftsRequest(),
                                               metadata=member.md(Role.GUIDE)),
                grpc.StatusCode.PERMISSION_DENIED)


async def test_points_redeem_adjust_expire_and_list(member: MemberHarness, redis):
    m = await register(member)
    await order(member, m.id, "o-1", 50_000)  # 500 points, expire in 365 days
    adj = await member.stub.AdjustPoints(pb.AdjustPointsRequest(
        member_id=m.id, delta=40, reason="goodwill", idempotency_key="adj-1"),
        metadata=member.md())
    assert adj.balance_after == 540 and adj.kind == pb.POINTS_ENTRY_KIND_ADJUST
    red = await member.stub.RedeemPoints(pb.RedeemPointsRequest(
        member_id=m.id, points=100, idempotency_key="r-1"), metadata=member.md())
    again = await member.stub.RedeemPoints(pb.RedeemPointsRequest(
        member_id=m.id, points=100, idempotency_key="r-1"), metadata=member.md())
    assert again.id == red.id and again.balance_after == 440
    await fails(member.stub.RedeemPoints(pb.RedeemPointsRequest(
        member_id=m.id, points=101, idempotency_key="r-1"), metadata=member.md()),
        grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    await fails(member.stub.RedeemPoints(pb.RedeemPointsRequest(
        member_id=m.id, points=10_000, idempotency_key="r-2"), metadata=member.md()),
        grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_POINTS")
    v = await fails(member.stub.RedeemPoints(pb.RedeemPointsRequest(member_id=m.id, points=0),
                                             metadata=member.md()),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert {"points", "idempotency_key"} == {f for f, _ in v}
    # Expiring soon: one member and all members.
    member.clock.advance(days=350)
    soon = await member.stub.ListExpiringPoints(pb.ListExpiringPointsRequest(
        member_id=m.id, within_days=30), metadata=member.md())
    assert sum(e.points for e in soon.expiring) == 440
    everyone = await member.stub.ListExpiringPoints(pb.ListExpiringPointsRequest(within_days=30),
                                                    metadata=member.md())
    assert len(everyone.expiring) == 2
    run = await member.stub.RunPointsExpiry(pb.RunPointsExpiryRequest(), metadata=member.md())
    assert run.lots_announced == 2 and run.points_expired == 0
    member.clock.advance(days=20)
    run = await member.stub.RunPointsExpiry(pb.RunPointsExpiryRequest(), metadata=member.md())
    assert (run.members_expired, run.points_expired) == (1, 440)
    entries = await member.stub.ListPointsEntries(pb.ListPointsEntriesRequest(
        member_id=m.id, page_size=2), metadata=member.md())
    assert entries.entries[0].kind == pb.POINTS_ENTRY_KIND_EXPIRE and entries.next_page_token
    rest = await member.stub.ListPointsEntries(pb.ListPointsEntriesRequest(
        member_id=m.id, page_size=10, page_token=entries.next_page_token), metadata=member.md())
    kinds = [e.kind for e in [*entries.entries, *rest.entries]]
    assert kinds[-1] == pb.POINTS_ENTRY_KIND_EARN and len(kinds) == 4
    await wait_for_event_types(redis, {"pond.events.v1.PointsExpiring",
                                       "pond.events.v1.PointsChanged"})


async def test_refund_reverses_in_proportion_once(member: MemberHarness):
    m = await register(member)
    await order(member, m.id, "o-1", 30_000)  # 300 points, 300 growth
    part = await member.stub.RefundOrder(pb.RefundOrderRequest(
        order_id="o-1", refund_id="rf-1", refund_fen=10_000), metadata=member.md())
    assert (part.points_reversed, part.growth_reversed) == (100, 100)
    replay = await member.stub.RefundOrder(pb.RefundOrderRequest(
        order_id="o-1", refund_id="rf-1", refund_fen=10_000), metadata=member.md())
    assert replay.order.refunded_fen == 10_000 and replay.member.points_balance == 200
    rest = await member.stub.RefundOrder(pb.RefundOrderRequest(order_id="o-1", refund_id="rf-2"),
                                         metadata=member.md())
    assert rest.order.refunded_fen == 30_000 and rest.member.points_balance == 0
    assert rest.member.paid_order_count == 0 and rest.member.growth_value == 0
    await fails(member.stub.RefundOrder(pb.RefundOrderRequest(order_id="o-1", refund_id="rf-3"),
                                        metadata=member.md()),
                grpc.StatusCode.FAILED_PRECONDITION, "ORDER_FULLY_REFUNDED")
    await fails(member.stub.RefundOrder(pb.RefundOrderRequest(order_id="zzz", refund_id="r"),
                                        metadata=member.md()), grpc.StatusCode.NOT_FOUND)
    orders = await member.stub.ListOrders(pb.ListOrdersRequest(member_id=m.id),
                                          metadata=member.md())
    assert [o.id for o in orders.orders] == ["o-1"]


async def test_stored_value_top_up_pay_refund(member: MemberHarness):
    m = await register(member)
    top = await member.stub.TopUpStoredValue(pb.TopUpStoredValueRequest(
        member_id=m.id, amount_fen=50_000, bonus_fen=5_000, idempotency_key="t1"),
        metadata=member.md())
    assert top.balance_after_fen == 55_000
    paid = await member.stub.PayWithStoredValue(pb.PayWithStoredValueRequest(
        member_id=m.id, amount_fen=20_000, reference="bill-1", idempotency_key="p1"),
        metadata=member.md())
    assert paid.balance_after_fen == 35_000
    await fails(member.stub.PayWithStoredValue(pb.PayWithStoredValueRequest(
        member_id=m.id, amount_fen=99_999, reference="bill-2", idempotency_key="p2"),
        metadata=member.md()), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
    back = await member.stub.RefundStoredValuePayment(pb.RefundStoredValuePaymentRequest(
        member_id=m.id, payment_entry_id=paid.id, amount_fen=5_000, idempotency_key="rf1"),
        metadata=member.md())
    assert back.balance_after_fen == 40_000 and back.payment_entry_id == paid.id
    await fails(member.stub.RefundStoredValuePayment(pb.RefundStoredValuePaymentRequest(
        member_id=m.id, payment_entry_id=paid.id, amount_fen=15_001, idempotency_key="rf2"),
        metadata=member.md()), grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_PAYMENT")
    entries = await member.stub.ListStoredValueEntries(
        pb.ListStoredValueEntriesRequest(member_id=m.id), metadata=member.md())
    assert [e.delta_fen for e in entries.entries] == [5_000, -20_000, 55_000]
    got = await member.stub.GetMember(pb.GetMemberRequest(member_id=m.id), metadata=member.md())
    assert got.stored_value_fen == 40_000 and got.kind == pb.MEMBER_KIND_STORED_VALUE


# -- auth, health, reflection ----------------------------------------------

async def test_auth_rules(member: MemberHarness):
    m = await register(member)
    req = pb.GetMemberRequest(member_id=m.id)
    await fails(member.stub.GetMember(req), grpc.StatusCode.UNAUTHENTICATED)
    await fails(member.stub.GetMember(req, metadata=call_metadata(token(Role.OPERATOR, ttl=-60))),
                grpc.StatusCode.UNAUTHENTICATED)
    await fails(member.stub.GetMember(req, metadata=(("authorization", "Bearer a.b.c"),)),
                grpc.StatusCode.UNAUTHENTICATED)
    await fails(member.stub.AdjustPoints(pb.AdjustPointsRequest(
        member_id=m.id, delta=5, reason="x", idempotency_key="k"),
        metadata=member.md(Role.GUIDE)), grpc.StatusCode.PERMISSION_DENIED)
    # The gateway acts only for the member it verified.
    mine = await member.stub.GetMember(req, metadata=member.md(Role.GATEWAY, member_id=m.id))
    assert mine.id == m.id and mine.identities[0].value == "138****5678"
    other = await register(member, phone("13700000000"))
    await fails(member.stub.GetMember(pb.GetMemberRequest(member_id=other.id),
                                      metadata=member.md(Role.GATEWAY, member_id=m.id)),
                grpc.StatusCode.PERMISSION_DENIED)
    await fails(member.stub.ListMembers(pb.ListMembersRequest(),
                                        metadata=member.md(Role.GATEWAY, member_id=m.id)),
                grpc.StatusCode.PERMISSION_DENIED)


async def test_every_method_has_an_auth_rule():
    from services.member.api import AUTH_RULES

    service = pb.DESCRIPTOR.services_by_name["MemberService"]
    assert set(AUTH_RULES) == {method.name for method in service.methods}


async def test_health_and_reflection_are_anonymous(member: MemberHarness):
    health = health_pb2_grpc.HealthStub(member.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(
        service="pond.member.v1.MemberService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(member.channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(ask()):
        names = {s.name for s in reply.list_services_response.service}
        assert "pond.member.v1.MemberService" in names
        break
    await member.service.server.set_serving(False)
    resp = await health.Check(health_pb2.HealthCheckRequest(
        service="pond.member.v1.MemberService"))
    assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_each_rpc_is_counted_in_prometheus_metrics(member: MemberHarness):
    from prometheus_client import REGISTRY

    method = "/pond.member.v1.MemberService/GetMember"
    labels = {"method": method, "code": "NOT_FOUND"}

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0

    before = sample("pond_grpc_requests_total", **labels)
    calls_before = sample("pond_grpc_request_seconds_count", method=method)
    slow_before = sample("pond_grpc_request_seconds_bucket", method=method, le="10.0")
    await fails(member.stub.GetMember(pb.GetMemberRequest(member_id="nobody"),
                                      metadata=member.md()), grpc.StatusCode.NOT_FOUND)
    assert sample("pond_grpc_requests_total", **labels) == before + 1
    assert sample("pond_grpc_request_seconds_count", method=method) == calls_before + 1
    assert sample("pond_grpc_request_seconds_bucket", method=method, le="10.0") == slow_before + 1
    assert sample("pond_grpc_request_seconds_bucket", method=method, le="+Inf") == calls_before + 1
    assert sample("pond_grpc_request_seconds_sum", method=method) > 0


async def test_request_id_comes_back_in_trailing_metadata(member: MemberHarness):
    m = await register(member)
    req = pb.GetMemberRequest(member_id=m.id)

    async def request_id(metadata: tuple) -> str:
        call = member.stub.GetMember(req, metadata=metadata)
        await call
        return dict(await call.trailing_metadata())["x-request-id"]

    # The caller's own id is kept; without one the server makes a fresh one per call.
    own = call_metadata(token(Role.OPERATOR), request_id="pos-7.call:42")
    assert await request_id(own) == "pos-7.call:42"
    made = {await request_id(member.md()) for _ in range(3)}
    assert len(made) == 3 and all(made)
    # An id that could carry personal data (a phone number, free text) is replaced: it
    # would be written to every log line of the call as it is.
    for unsafe in ("13812345678", "call me", "x" * 65, '"}{"'):
        got = await request_id(call_metadata(token(Role.OPERATOR), request_id=unsafe))
        assert got != unsafe and "13812345678" not in got
