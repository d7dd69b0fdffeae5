"""The member store (services/member/store.py: its collections, queries and writes)
over every document-store engine: SQLite and the MongoDB engine on mongomock-motor
always; a real MongoDB when MONGODB_URI is set. The engines' own contract (guards,
atomicity, outbox, idempotency records) is tests/contract/test_documents.py; this
suite proves the member's queries and writes mean the same on each."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from services.member.domain.members import Gender, Identity, IdentityKind, Member, MemberKind
from services.member.domain.orders import Order, OrderItem, Refund
from services.member.domain.points import Lot, PointsEntry, PointsEntryKind
from services.member.domain.stored_value import StoredValueEntry, StoredValueEntryKind
from services.member.domain.tiers import Tier, TierChange, TierProgram
from services.member.store import MemberFilter, MemberStore, MemberWrite, open_store
from services.runtime.documents import IDEMPOTENCY, Conflict, DuplicateKey, IdempotencyRecord

# Microseconds matter: the store keeps them. FAR is past 2038, where float timestamps
# used to lose a microsecond on the way through.
T0 = datetime(2025, 3, 1, 8, 30, 15, 123457, tzinfo=UTC)
FAR = datetime(2038, 3, 17, 2, 40, 10, 534271, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "mongomock", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def backend(request) -> str:
    return request.param


@pytest_asyncio.fixture
async def store(backend: str, tmp_path):
    if backend == "sqlite":
        s = await open_store(sqlite_path=str(tmp_path / "member.db"))
        yield s
        await s.close()
    elif backend == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        s = await open_store(mongo_database=AsyncMongoMockClient()[f"t_{uuid.uuid4().hex}"])
        yield s
        await s.close()
    else:
        uri = os.environ.get("MONGODB_URI", "")
        if not uri:
            pytest.skip("MONGODB_URI is not set")
        from services.runtime.storage import open_mongo

        name = f"pond_contract_{uuid.uuid4().hex[:16]}"
        db = open_mongo(uri, name)
        try:
            s = await open_store(mongo_database=db)
            yield s
            await s.close()
        finally:
            await db.client.drop_database(name)
            db.client.close()


# -- builders --


def new_member(mid: str, *lookups: str, **fields) -> Member:
    lookups = lookups or (f"phone:{mid}",)
    idents = [Identity(IdentityKind.PHONE, lk, f"ciphertext-{lk}") for lk in lookups]
    return Member(id=mid, identities=idents, created_at=T0, updated_at=T0, tier_since=T0, **fields)


def write(m: Member | None = None, **parts) -> MemberWrite:
    """A MemberWrite of the given parts, refusable ones first (as the use cases add
    them): identities, a new or replaced order, the member, then the rest."""
    w = MemberWrite()
    w.bind_identities(parts.pop("identities", []), m.id if m else "")
    if (o := parts.pop("new_order", None)) is not None:
        w.add_order(o)
    if (o := parts.pop("order", None)) is not None:
        w.save_order(o)
    if m is not None:
        w.save_member(m)
    w.save_lots(parts.pop("lots", []))
    w.add_points_entries(parts.pop("points_entries", []))
    w.add_sv_entries(parts.pop("sv_entries", []))
    for c in parts.pop("tier_changes", []):
        w.add_tier_change(c)
    if (p := parts.pop("tier_program", None)) is not None:
        w.set_tier_program(p)
    if (rec := parts.pop("idempotency", None)) is not None:
        w.remember(rec)
    w.emit(*parts.pop("events", []))
    assert not parts, parts
    return w


async def add(store: MemberStore, m: Member, **parts) -> Member:
    """Inserts `m` with its identities (and any other parts)."""
    extra = parts.pop("identities", [])
    await store.commit(write(m, identities=[*(i.lookup for i in m.identities), *extra], **parts))
    return m


async def update(store: MemberStore, m: Member, **parts) -> None:
    await store.commit(write(m, **parts))


def lot(lot_id: str, member_id: str, expires_at: datetime, remaining: int = 10, **kw) -> Lot:
    return Lot(lot_id, member_id, T0, expires_at, 10, remaining, **kw)


def points_entry(entry_id: str, member_id: str, delta: int = 5, **kw) -> PointsEntry:
    return PointsEntry(entry_id, member_id, PointsEntryKind.EARN, delta, 100, T0, **kw)


def sv_entry(
    entry_id: str,
    member_id: str,
    kind=StoredValueEntryKind.TOP_UP,
    delta: int = 1000,
    payment: str = "",
) -> StoredValueEntry:
    return StoredValueEntry(entry_id, member_id, kind, delta, 0, 5000, T0, "ref-1", payment)


def order(
    order_id: str,
    member_id: str,
    paid_at: datetime,
    growth: int = 100,
    refunds: list[Refund] | None = None,
) -> Order:
    return Order(
        order_id,
        member_id,
        3,
        "store-1",
        "guide-1",
        (OrderItem("sku-1", "茶", 2, 1500), OrderItem("sku-2", "", 1, 2000)),
        5000,
        paid_at,
        50,
        growth,
        "fp-" + order_id,
        list(refunds or []),
    )


def record(key: str, response: bytes = b"o-1", scope: str = "RecordOrder") -> IdempotencyRecord:
    return IdempotencyRecord(scope, key, "fingerprint-" + key, response, 2**62)


async def pending_events(store: MemberStore) -> list[bytes]:
    return [e for _, e in await store.docs.outbox_pending(100)]


async def everything_absent(store: MemberStore, suffix: str) -> None:
    """None of the side writes of `side_writes(suffix)` exist."""
    assert await store.member_id_for(f"wx:{suffix}") is None
    assert await store.get_points_entry(f"pe-{suffix}") is None
    assert await store.get_stored_value_entry(f"sv-{suffix}") is None
    assert await store.get_order(f"o-{suffix}") is None
    assert await store.docs.recall("RecordOrder", f"k-{suffix}") is None
    assert await store.get_tier_program() is None


def side_writes(member_id: str, suffix: str) -> dict:
    return dict(
        identities=[f"wx:{suffix}"],
        lots=[lot(f"pe-{suffix}", member_id, FAR)],
        points_entries=[points_entry(f"pe-{suffix}", member_id)],
        sv_entries=[sv_entry(f"sv-{suffix}", member_id)],
        new_order=order(f"o-{suffix}", member_id, T0),
        tier_changes=[TierChange(member_id, 0, 1, "growth", T0)],
        tier_program=TierProgram((Tier(0, "会员", 0),)),
        idempotency=record(f"k-{suffix}"),
        events=[f"event-{suffix}".encode()],
    )


# -- members --


async def test_insert_get_and_look_up_a_member(store: MemberStore) -> None:
    m = new_member(
        "m1",
        "phone:h1",
        "unionid:u1",
        name="张三",
        gender=Gender.FEMALE,
        birthday="1990-05-06",
        city="上海",
        store_id="s1",
        guide_id="g1",
        channel=2,
        referrer_id="m0",
        consents={1: (True, T0), 3: (False, T0 + timedelta(seconds=1))},
        co_branded=True,
        paid_until=FAR,
        stored_value_opened=True,
        kind=MemberKind.PAID,
        tier_level=2,
        growth_value=12_345,
        points_balance=678,
        stored_value_fen=9_900,
        paid_order_count=4,
        total_spent_fen=123_400,
        first_paid_at=T0,
        last_paid_at=T0 + timedelta(days=3),
    )
    m.identities.append(Identity(IdentityKind.WECHAT_OPENID, "openid:app:o1", "o1", "app"))
    await store.commit(write(m, identities=["phone:h1", "unionid:u1"]))
    assert m.version == 1
    got = await store.get_member("m1")
    assert got == m
    assert got.created_at.tzinfo is not None and got.paid_until == FAR
    assert await store.member_id_for("phone:h1") == "m1"
    assert await store.member_id_for("unionid:u1") == "m1"
    assert await store.member_id_for("openid:app:o1") is None  # only bound identities
    assert await store.get_member("nobody") is None
    assert await store.member_id_for("phone:nobody") is None


async def test_update_bumps_the_version(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    m.name, m.tier_level, m.paid_until = "李四", 3, None
    await update(store, m, identities=["wx:1"])
    assert m.version == 2
    got = await store.get_member("m1")
    assert (got.name, got.tier_level, got.paid_until, got.version) == ("李四", 3, None, 2)
    assert await store.member_id_for("wx:1") == "m1"


async def test_inserting_an_existing_member_is_refused(store: MemberStore) -> None:
    await add(store, new_member("m1"))
    again = new_member("m1", "phone:other", name="again")
    with pytest.raises(DuplicateKey) as info:
        await add(store, again, **side_writes("m1", "x"))
    assert info.value.collection == "members"
    assert again.version == 0
    assert (await store.get_member("m1")).name == ""
    assert await store.member_id_for("phone:other") is None
    await everything_absent(store, "x")
    assert await pending_events(store) == []


async def test_a_stale_version_conflicts_and_writes_nothing(store: MemberStore) -> None:
    m = await add(store, new_member("m1"), events=[b"registered"])
    stale = m.copy()
    m.name = "first"
    await update(store, m)
    stale.name = "second"
    with pytest.raises(Conflict):
        await update(store, stale, **side_writes("m1", "x"))
    assert stale.version == 1  # unchanged by a refused commit
    got = await store.get_member("m1")
    assert (got.name, got.version) == ("first", 2)
    await everything_absent(store, "x")
    assert await store.open_lots("m1") == []
    assert await store.list_tier_changes("m1", 0, 10) == []
    assert await pending_events(store) == [b"registered"]


async def test_updating_a_missing_member_conflicts(store: MemberStore) -> None:
    ghost = replace(new_member("ghost"), version=1)
    with pytest.raises(Conflict):
        await store.commit(write(ghost))
    assert await store.get_member("ghost") is None


async def test_a_taken_identity_is_refused_and_writes_nothing(store: MemberStore) -> None:
    await add(store, new_member("a", "phone:a"))
    b = await add(store, new_member("b", "phone:b"))
    b.name = "changed"
    parts = side_writes("b", "x")
    parts["identities"] = ["wx:x", "phone:a"]
    with pytest.raises(DuplicateKey) as info:
        await update(store, b, **parts)
    assert (info.value.collection, info.value.key) == ("identities", "phone:a")
    assert await store.member_id_for(info.value.key) == "a"  # the owner, for the error
    got = await store.get_member("b")
    assert (got.name, got.version) == ("", 1)
    await everything_absent(store, "x")
    assert await store.member_id_for("phone:a") == "a"
    assert await pending_events(store) == []


async def test_a_new_member_with_a_taken_identity_is_not_written(store: MemberStore) -> None:
    await add(store, new_member("a", "phone:a"))
    with pytest.raises(DuplicateKey) as info:
        await add(store, new_member("c", "phone:c", "phone:a"))
    assert await store.member_id_for(info.value.key) == "a"
    assert await store.get_member("c") is None
    assert await store.member_id_for("phone:c") is None


async def test_the_same_refusal_on_every_engine(store: MemberStore) -> None:
    """Several things wrong at once: every engine names the same one (the first in
    the order the writes were added, the idempotency record after them), and writes
    nothing."""
    m = await add(store, new_member("m1", "phone:a"))
    await update(store, m, new_order=order("o-1", "m1", T0), idempotency=record("k"))
    stale = replace(m.copy(), version=1)
    everything_wrong = dict(
        identities=["wx:new", "phone:a"], new_order=order("o-1", "m1", T0),
        idempotency=record("k"),
    )
    with pytest.raises(DuplicateKey) as info:
        await update(store, stale, **everything_wrong)
    assert (info.value.collection, info.value.key) == ("identities", "phone:a")
    del everything_wrong["identities"]
    with pytest.raises(DuplicateKey) as info:
        await update(store, stale, **everything_wrong)
    assert (info.value.collection, info.value.key) == ("orders", "o-1")
    del everything_wrong["new_order"]
    with pytest.raises(Conflict):
        await update(store, stale, **everything_wrong)
    with pytest.raises(DuplicateKey) as info:
        await update(store, m, **everything_wrong)
    assert info.value.collection == IDEMPOTENCY
    assert await store.member_id_for("wx:new") is None
    assert (await store.get_member("m1")).version == 2


async def test_concurrent_commits_on_one_version_one_wins(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    copies = [replace(m.copy(), name=f"n{i}") for i in range(5)]
    results = await asyncio.gather(
        *(
            store.commit(
                write(
                    c,
                    identities=[f"wx:{i}"],
                    points_entries=[points_entry(f"pe-{i}", "m1")],
                    events=[f"e{i}".encode()],
                )
            )
            for i, c in enumerate(copies)
        ),
        return_exceptions=True,
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, Conflict) for r in results if r is not None)
    (w,) = winners
    got = await store.get_member("m1")
    assert (got.name, got.version) == (f"n{w}", 2)
    for i in range(5):
        assert (await store.member_id_for(f"wx:{i}") is not None) == (i == w)
        assert (await store.get_points_entry(f"pe-{i}") is not None) == (i == w)
    assert await pending_events(store) == [f"e{w}".encode()]


async def test_members_with_birthday_match_the_month_and_day(store: MemberStore) -> None:
    for mid, day in (("m1", "1990-02-28"), ("m2", "1992-02-29"), ("m3", "1990-12-28"),
                     ("m4", ""), ("m5", "2001-02-28")):
        await add(store, new_member(mid, birthday=day))
    found = await store.members_with_birthday(("-02-28", "-02-29"), "", 10)
    assert [m.id for m in found] == ["m1", "m2", "m5"]
    assert [m.id for m in await store.members_with_birthday(("-02-28",), "m1", 1)] == ["m5"]
    assert await store.members_with_birthday(("-07-04",), "", 10) == []
    # A birthday changed later is found by its new day only.
    m3 = await store.get_member("m3")
    m3.birthday = "1990-07-04"
    await update(store, m3)
    assert [m.id for m in await store.members_with_birthday(("-07-04",), "", 10)] == ["m3"]
    assert [m.id for m in await store.members_with_birthday(("-12-28",), "", 10)] == []


async def test_list_members_filters_and_pages(store: MemberStore) -> None:
    rows = [  # id, store, guide, tier, kind, channel
        ("m01", "s1", "g1", 0, MemberKind.REGISTERED, 1),
        ("m02", "s1", "g2", 1, MemberKind.CONSUMING, 2),
        ("m03", "s2", "g1", 2, MemberKind.PAID, 1),
        ("m04", "s1", "g1", 3, MemberKind.CONSUMING, 3),
        ("m05", "s2", "g2", 1, MemberKind.STORED_VALUE, 2),
        ("m06", "", "", 0, MemberKind.REGISTERED, 0),
    ]
    for mid, store_id, guide, tier, kind, channel in reversed(rows):
        await add(
            store,
            new_member(
                mid, store_id=store_id, guide_id=guide, tier_level=tier, kind=kind, channel=channel
            ),
        )

    async def ids(flt: MemberFilter, after: str = "", limit: int = 100) -> list[str]:
        return [m.id for m in await store.list_members(flt, after, limit)]

    assert await ids(MemberFilter()) == ["m01", "m02", "m03", "m04", "m05", "m06"]
    assert await ids(MemberFilter(store_id="s1")) == ["m01", "m02", "m04"]
    assert await ids(MemberFilter(guide_id="g2")) == ["m02", "m05"]
    assert await ids(MemberFilter(tier_level=0)) == ["m01", "m06"]
    assert await ids(MemberFilter(tier_level=1)) == ["m02", "m05"]
    assert await ids(MemberFilter(kind=MemberKind.CONSUMING)) == ["m02", "m04"]
    assert await ids(MemberFilter(channel=2)) == ["m02", "m05"]
    assert await ids(MemberFilter(min_tier_level=2)) == ["m03", "m04"]
    assert await ids(MemberFilter(tier_level=1, min_tier_level=2)) == []
    assert await ids(MemberFilter(tier_level=3, min_tier_level=2)) == ["m04"]
    assert await ids(MemberFilter(store_id="s1", guide_id="g1", channel=3)) == ["m04"]
    assert await ids(MemberFilter(store_id="s9")) == []
    # paging
    assert await ids(MemberFilter(), "", 2) == ["m01", "m02"]
    assert await ids(MemberFilter(), "m02", 2) == ["m03", "m04"]
    assert await ids(MemberFilter(), "m04", 2) == ["m05", "m06"]
    assert await ids(MemberFilter(), "m06", 2) == []
    assert await ids(MemberFilter(store_id="s1"), "m01", 1) == ["m02"]
    assert await ids(MemberFilter(), "", 0) == []
    got = (await store.list_members(MemberFilter(store_id="s2"), "", 1))[0]
    assert got == await store.get_member("m03")


async def test_lapsed_paid_member_ids(store: MemberStore) -> None:
    now = T0 + timedelta(days=30)
    await add(
        store, new_member("lapsed1", kind=MemberKind.PAID, paid_until=now - timedelta(days=1))
    )
    await add(store, new_member("lapsed2", kind=MemberKind.PAID, paid_until=now))  # <= now
    await add(
        store,
        new_member("current", kind=MemberKind.PAID, paid_until=now + timedelta(microseconds=1)),
    )
    await add(
        store,
        new_member("stored", kind=MemberKind.STORED_VALUE, paid_until=now - timedelta(days=1)),
    )  # already moved on
    await add(store, new_member("never", kind=MemberKind.PAID))  # no paid_until
    assert sorted(await store.lapsed_paid_member_ids(now, 10)) == ["lapsed1", "lapsed2"]
    one = await store.lapsed_paid_member_ids(now, 1)
    assert len(one) == 1 and one[0] in {"lapsed1", "lapsed2"}
    assert await store.lapsed_paid_member_ids(T0, 10) == []


# -- idempotency records in the member's writes --


async def test_an_idempotency_record_commits_with_the_write(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    rec = record("k1", response=b"\x00\xff\x80 not utf-8")
    await update(store, m, idempotency=rec)
    assert await store.docs.recall("RecordOrder", "k1") == rec
    assert await store.docs.recall("RecordOrder", "k2") is None
    assert await store.docs.recall("TopUp", "k1") is None
    # The same key in another scope is another record.
    other = record("k1", response=b"t-1", scope="TopUp")
    await update(store, m, idempotency=other)
    assert await store.docs.recall("TopUp", "k1") == other
    m.name = "replayed"
    with pytest.raises(DuplicateKey) as info:
        await update(
            store,
            m,
            identities=["wx:dup"],
            points_entries=[points_entry("pe-dup", "m1")],
            idempotency=record("k1", response=b"second"),
        )
    assert info.value.collection == IDEMPOTENCY
    got = await store.get_member("m1")
    assert (got.name, got.version) == ("", 3)
    assert await store.docs.recall("RecordOrder", "k1") == rec
    assert await store.member_id_for("wx:dup") is None
    assert await store.get_points_entry("pe-dup") is None


async def test_an_idempotency_record_without_a_member(store: MemberStore) -> None:
    rec = record("solo")
    await store.commit(write(idempotency=rec))
    assert await store.docs.recall("RecordOrder", "solo") == rec
    with pytest.raises(DuplicateKey):
        await store.commit(write(idempotency=rec, events=[b"x"]))
    assert await pending_events(store) == []


# -- points --


async def test_lots_upsert_and_open_lots(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    await add(store, new_member("m2"))
    l1 = lot("l1", "m1", FAR, order_id="o-1")
    l2 = lot("l2", "m1", T0 + timedelta(days=10), remaining=3)
    l3 = lot("l3", "m2", FAR)
    await update(store, m, lots=[l1, l2, l3])
    assert sorted(await store.open_lots("m1"), key=lambda x: x.id) == [l1, l2]
    assert await store.open_lots("m2") == [l3]
    assert await store.open_lots("nobody") == []
    # replaced by id: spent and announced
    l1b = replace(l1, remaining=0)
    l2b = replace(l2, remaining=1, announced=True)
    await update(store, m, lots=[l1b, l2b])
    assert await store.open_lots("m1") == [l2b]


async def test_due_expiring_and_unannounced_lots(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    day = timedelta(days=1)
    lots = [
        lot("a1", "ma", T0 - day),  # due
        lot("a2", "ma", T0 + 2 * day),
        lot("a3", "ma", T0 + 3 * day, announced=True),
        lot("b1", "mb", T0),  # due exactly at T0
        lot("b2", "mb", T0 + 2 * day),
        lot("b3", "mb", T0 - day, remaining=0),  # spent: never listed
        lot("c1", "mc", T0 + 2 * day, remaining=0),  # spent
        lot("c2", "mc", T0 + 10 * day),  # outside the window
        lot("d1", "md", T0 + day),  # exactly at the start: excluded
    ]
    await update(store, m, lots=lots)
    by_id = {x.id: x for x in lots}
    assert sorted(await store.members_with_due_lots(T0, 10)) == ["ma", "mb"]
    assert sorted(await store.members_with_due_lots(T0 - timedelta(microseconds=1), 10)) == ["ma"]
    assert len(await store.members_with_due_lots(T0, 1)) == 1
    assert await store.members_with_due_lots(T0 - 2 * day, 10) == []

    start, end = T0 + day, T0 + 3 * day  # (start, end]
    assert await store.expiring_lots("", start, end, "", 10) == [
        by_id["a2"],
        by_id["a3"],
        by_id["b2"],
    ]
    assert await store.expiring_lots("ma", start, end, "", 10) == [by_id["a2"], by_id["a3"]]
    assert await store.expiring_lots("mb", start, end, "", 10) == [by_id["b2"]]
    assert await store.expiring_lots("mc", start, end, "", 10) == []
    assert await store.expiring_lots("", start, end, "", 2) == [by_id["a2"], by_id["a3"]]
    assert await store.expiring_lots("", start, end, "a3", 2) == [by_id["b2"]]
    assert await store.expiring_lots("ma", start, end, "a2", 10) == [by_id["a3"]]
    assert await store.expiring_lots("", start, T0 + 2 * day, "", 10) == [by_id["a2"], by_id["b2"]]
    assert await store.unannounced_lots(start, end, 10) == [by_id["a2"], by_id["b2"]]
    assert await store.unannounced_lots(start, end, 1) == [by_id["a2"]]
    assert await store.unannounced_lots(T0 + 3 * day, T0 + 30 * day, 10) == [by_id["c2"]]


async def test_points_entries_newest_first(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    entries = [points_entry(f"pe-{i:02d}", "m1", delta=i) for i in range(1, 6)]
    spend = PointsEntry(
        "pe-06",
        "m1",
        PointsEntryKind.REDEEM,
        -7,
        8,
        FAR,
        "兑换",
        "o-1",
        None,
        (("pe-01", 1), ("pe-02", 6)),
    )
    grant = points_entry("pe-07", "m1", reason="order", order_id="o-2", expires_at=FAR)
    await update(store, m, points_entries=[*entries[:3]])
    await update(store, m, points_entries=[*entries[3:], spend, grant, points_entry("pe-99", "m2")])
    assert await store.get_points_entry("pe-06") == spend
    assert await store.get_points_entry("pe-07") == grant
    assert await store.get_points_entry("nope") is None

    async def ids(before: str, limit: int) -> list[str]:
        return [e.id for e in await store.list_points_entries("m1", before, limit)]

    assert await ids("", 100) == ["pe-07", "pe-06", "pe-05", "pe-04", "pe-03", "pe-02", "pe-01"]
    assert await ids("", 3) == ["pe-07", "pe-06", "pe-05"]
    assert await ids("pe-05", 3) == ["pe-04", "pe-03", "pe-02"]
    assert await ids("pe-02", 3) == ["pe-01"]
    assert await ids("pe-01", 3) == []
    assert [e.id for e in await store.list_points_entries("m2", "", 10)] == ["pe-99"]
    assert (await store.list_points_entries("m1", "", 1))[0] == grant


# -- stored value --


async def test_stored_value_entries_and_refunds(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    top = sv_entry("sv-01", "m1", delta=10_000)
    pay = sv_entry("sv-02", "m1", StoredValueEntryKind.PAY, -3000)
    pay2 = sv_entry("sv-03", "m1", StoredValueEntryKind.PAY, -500)
    r1 = sv_entry("sv-04", "m1", StoredValueEntryKind.REFUND, 1000, payment="sv-02")
    r2 = sv_entry("sv-05", "m1", StoredValueEntryKind.REFUND, 700, payment="sv-02")
    other = sv_entry("sv-06", "m2", StoredValueEntryKind.REFUND, 400, payment="sv-03")
    await update(store, m, sv_entries=[top, pay, pay2])
    assert await store.refunded_fen_for_payment("sv-02") == 0
    await update(store, m, sv_entries=[r1, r2, other])
    assert await store.refunded_fen_for_payment("sv-02") == 1700
    assert await store.refunded_fen_for_payment("sv-03") == 400
    assert await store.refunded_fen_for_payment("nope") == 0
    assert await store.get_stored_value_entry("sv-05") == r2
    assert await store.get_stored_value_entry("nope") is None

    async def ids(before: str, limit: int) -> list[str]:
        return [e.id for e in await store.list_stored_value_entries("m1", before, limit)]

    assert await ids("", 10) == ["sv-05", "sv-04", "sv-03", "sv-02", "sv-01"]
    assert await ids("", 2) == ["sv-05", "sv-04"]
    assert await ids("sv-04", 2) == ["sv-03", "sv-02"]
    assert await ids("sv-02", 2) == ["sv-01"]
    assert (await store.list_stored_value_entries("m1", "sv-03", 1))[0] == pay


# -- orders --


async def test_orders_insert_duplicate_update_and_get(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    o = order("o-1", "m1", T0)
    await update(store, m, new_order=o)
    assert o.version == 1
    assert await store.get_order("o-1") == o
    assert await store.get_order("nope") is None
    m.name = "dup"
    with pytest.raises(DuplicateKey) as info:
        await update(store, m, new_order=order("o-1", "m1", FAR, growth=1), identities=["wx:dup"])
    assert (info.value.collection, info.value.key) == ("orders", "o-1")
    assert await store.get_order("o-1") == o
    assert (await store.get_member("m1")).version == 2
    assert await store.member_id_for("wx:dup") is None
    refunded = replace(
        o,
        refunds=[
            Refund("r-1", 1000, 10, 20, T0 + timedelta(hours=1)),
            Refund("r-2", 500, 5, 10, FAR),
        ],
    )
    await update(store, m, order=refunded)
    assert refunded.version == 2
    assert await store.get_order("o-1") == refunded
    # Replacing an order that is not there conflicts and writes nothing.
    with pytest.raises(Conflict):
        await update(store, m, order=replace(order("o-ghost", "m1", T0), version=1))
    assert await store.get_order("o-ghost") is None


async def test_replacing_an_order_is_guarded_by_its_version(store: MemberStore) -> None:
    """Two refunds planned on one read of an order cannot both land, even when each
    reads the member afresh: the order's version guards it as the member's does."""
    m = await add(store, new_member("m1"), events=[b"registered"])
    await update(store, m, new_order=order("o-1", "m1", T0))
    o = await store.get_order("o-1")
    r1, r2 = Refund("r-1", 3000, 30, 60, T0), Refund("r-2", 3000, 30, 60, FAR)
    first = replace(o, refunds=[r1])
    await update(store, m, order=first)
    late = side_writes("m1", "x")
    del late["new_order"]
    with pytest.raises(Conflict):
        await update(store, m, order=replace(o, refunds=[r2]), **late)
    assert await store.get_order("o-1") == first
    got = await store.get_member("m1")
    assert got.version == m.version == 3
    await everything_absent(store, "x")
    assert await pending_events(store) == [b"registered"]
    # A stale member refuses the change as well, and the order stays as it was.
    stale = replace(m.copy(), version=2)
    both = replace(first, refunds=[r1, r2])
    with pytest.raises(Conflict):
        await update(store, stale, order=both)
    assert await store.get_order("o-1") == first
    # Planned on the order as it is now, the second refund lands.
    await update(store, m, order=both)
    assert await store.get_order("o-1") == both
    assert m.version == 4


async def test_list_orders_newest_paid_first(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    t = [T0 + timedelta(hours=h) for h in range(4)]
    orders = [
        order("o-a", "m1", t[1]),
        order("o-b", "m1", t[3]),
        order("o-c", "m1", t[1]),
        order("o-d", "m1", t[0]),
        order("o-e", "m1", t[2]),
        order("o-z", "m2", t[3]),
    ]
    for o in orders:
        await update(store, m, new_order=o)

    async def ids(before: str, limit: int, member_id: str = "m1") -> list[str]:
        return [o.id for o in await store.list_orders(member_id, before, limit)]

    assert await ids("", 10) == ["o-b", "o-e", "o-c", "o-a", "o-d"]
    assert await ids("", 2) == ["o-b", "o-e"]
    assert await ids("o-e", 1) == ["o-c"]  # same paid_at as o-a: ties by id, descending
    assert await ids("o-c", 2) == ["o-a", "o-d"]
    assert await ids("o-d", 2) == []
    assert await ids("o-unknown", 2) == ["o-b", "o-e"]  # an unknown anchor starts over
    assert await ids("o-z", 1) == ["o-b"]  # another member's order is no anchor
    assert await ids("", 10, "m2") == ["o-z"]
    assert (await store.list_orders("m1", "o-b", 1))[0] == orders[4]


async def test_growth_since_is_net_of_refunds(store: MemberStore) -> None:
    m = await add(store, new_member("m1"))
    day = timedelta(days=1)
    await update(store, m, new_order=order("o-1", "m1", T0 - day, growth=100))
    await update(store, m, new_order=order("o-2", "m1", T0, growth=200))
    await update(store, m, new_order=order("o-3", "m1", T0 + day, growth=300))
    await update(store, m, new_order=order("o-4", "m2", T0 + day, growth=999))
    assert await store.growth_since("m1", T0 - 2 * day) == 600
    assert await store.growth_since("m1", T0) == 500  # paid at `since` counts
    assert await store.growth_since("m1", T0 + timedelta(microseconds=1)) == 300
    assert await store.growth_since("m1", T0 + 2 * day) == 0
    assert await store.growth_since("nobody", T0 - 2 * day) == 0
    o3 = await store.get_order("o-3")
    o3.refunds.append(Refund("r-1", 1000, 5, 120, T0 + 2 * day))
    await update(store, m, order=o3)
    assert await store.growth_since("m1", T0) == 380


# -- tiers --


async def test_tier_program_round_trip(store: MemberStore) -> None:
    assert await store.get_tier_program() is None
    program = TierProgram(
        (
            Tier(0, "会员 Member", 0),
            Tier(1, "银卡", 1000, 1100, 100, {"生日礼": "双倍积分", "free_shipping": "yes"}),
            Tier(2, "金卡 Gold", 5000, 1250, 300, {"lounge": "贵宾室"}),
        ),
        evaluation_window_days=180,
        retention_days=30,
        updated_at=FAR,
    )
    await store.commit(write(tier_program=program))
    assert await store.get_tier_program() == program
    second = replace(program, tiers=program.tiers[:1], retention_days=0, updated_at=None)
    await store.commit(write(tier_program=second))
    assert await store.get_tier_program() == second


async def test_tier_changes_newest_first(store: MemberStore) -> None:
    a = await add(store, new_member("a"))
    b = await add(store, new_member("b"))
    c1 = TierChange("a", 0, 1, "growth", T0)
    c2 = TierChange("b", 0, 2, "growth", T0)
    c3 = TierChange("a", 1, 2, "growth", T0 + timedelta(days=1))
    c4 = TierChange("a", 2, 0, "reevaluation", FAR)
    await update(store, a, tier_changes=[c1])
    await update(store, b, tier_changes=[c2])
    await update(store, a, tier_changes=[c3, c4])
    listed = await store.list_tier_changes("a", 0, 10)
    assert [c for _, c in listed] == [c4, c3, c1]
    seqs = [s for s, _ in listed]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 3
    assert all(isinstance(s, int) and s > 0 for s in seqs)
    ((b_seq, b_change),) = await store.list_tier_changes("b", 0, 10)
    assert b_change == c2 and seqs[2] < b_seq < seqs[1]
    assert await store.list_tier_changes("a", 0, 1) == listed[:1]
    assert await store.list_tier_changes("a", seqs[0], 1) == listed[1:2]
    assert await store.list_tier_changes("a", seqs[1], 10) == listed[2:]
    assert await store.list_tier_changes("a", seqs[2], 10) == []
    assert await store.list_tier_changes("nobody", 0, 10) == []


# -- events --


async def test_events_commit_with_the_write_in_order(store: MemberStore) -> None:
    m = await add(store, new_member("m1"), events=[b"e1", b"e2"])
    await update(store, m, events=[b"e3"])
    await store.commit(write(events=[b"\x00e4\xff"]))
    assert await pending_events(store) == [b"e1", b"e2", b"e3", b"\x00e4\xff"]


async def test_a_merge_write_moves_rows_and_identities(store: MemberStore) -> None:
    """What a merge commits (services/member/merging.py), the same on every engine:
    identities rebound and released, lots, ledger entries and orders re-owned, both
    members guarded, and rows_of finds what is to move."""
    a = await add(store, new_member("m-a", "phone:a"))
    b = await add(store, new_member("m-b", "phone:b", "unionid:b", nickname="鱼"))
    lot = Lot("l-1", "m-b", T0, FAR, 50, 20, "o-1")
    entry = PointsEntry("p-1", "m-b", PointsEntryKind.EARN, 50, 50, T0, "", "o-1", FAR)
    sv = StoredValueEntry("s-1", "m-b", StoredValueEntryKind.TOP_UP, 900, 0, 900, T0)
    o = Order("o-1", "m-b", 4, "", "", (), 5_000, T0, 50, 50)
    await store.commit(write(b, new_order=o, lots=[lot], points_entries=[entry],
                             sv_entries=[sv]))
    b = await store.get_member("m-b")
    rows = await store.rows_of("m-b", T0 - timedelta(days=1))
    assert [x.id for x in rows.lots] == ["l-1"] and rows.window_growth == 50
    assert [x.id for x in rows.orders] == ["o-1"] and len(rows.points_entries) == 1
    assert [x.id for x in rows.sv_entries] == ["s-1"]

    w = MemberWrite()
    a = await store.get_member("m-a")
    a.merged_into, b.merged_into = "", "m-a"
    w.save_member(a)
    w.save_member(b)
    w.save_order(replace(rows.orders[0], member_id="m-a"))
    w.rebind_identities(["unionid:b"], "m-a")
    w.release_identities(["phone:b"])
    w.save_lots([replace(lot, member_id="m-a")])
    w.move_ledger_entries([replace(entry, member_id="m-a")], [replace(sv, member_id="m-a")])
    await store.commit(w)

    assert await store.member_id_for("unionid:b") == "m-a"
    assert await store.member_id_for("phone:b") is None
    assert [x.id for x in await store.open_lots("m-a")] == ["l-1"]
    assert await store.open_lots("m-b") == []
    assert [e.id for e in await store.list_points_entries("m-a", "", 10)] == ["p-1"]
    assert [e.id for e in await store.list_stored_value_entries("m-a", "", 10)] == ["s-1"]
    assert [x.id for x in await store.list_orders("m-a", "", 10)] == ["o-1"]
    assert await store.growth_since("m-a", T0) == 50
    merged = await store.get_member("m-b")
    assert merged.merged_into == "m-a" and merged.nickname == "鱼"
    # The merged member's copy read before the merge is stale: guarded.
    stale = await store.get_member("m-b")
    stale.version -= 1
    with pytest.raises(Conflict):
        await store.commit(write(stale))
