"""Group activity and health over a real grpc.aio server: messages per member per day
(a day sent again replaces), check-ins, chain joins and paid orders attributed to
groups through the real event path, health with its diagnosis, groups ranked worst
first, and a column's effect by weekday."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from pond.community.v1 import community_pb2 as pb

from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    VIP,
    Community,
    community_fixture,
    fails,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def record(c: Community, group_id: str, day: str, **counts: int) -> pb.GroupActivityDay:
    return await c.stub.RecordGroupActivity(pb.RecordGroupActivityRequest(
        group_id=group_id, day=day,
        members=[pb.MemberMessages(member_id=m, messages=n) for m, n in counts.items()]),
        metadata=c.md(Role.SERVICE))


async def health(c: Community, group_id: str) -> pb.GroupHealth:
    return await c.stub.GetGroupHealth(pb.GetGroupHealthRequest(group_id=group_id),
                                       metadata=c.md(Role.GUIDE))


async def test_a_day_sent_again_replaces_each_member_count(community: Community):
    c = community
    await c.group("a")
    day = await record(c, "a", "2026-03-01", m1=5, m2=3)
    assert (day.messages, day.speakers) == (8, 2)
    again = await record(c, "a", "2026-03-01", m1=5, m2=3)
    assert (again.messages, again.speakers) == (8, 2)
    changed = await record(c, "a", "2026-03-01", m1=2, m2=0)
    assert (changed.messages, changed.speakers) == (2, 1)
    assert (await record(c, "a", "2026-03-01")).messages == 2  # nothing sent: as it was
    for bad in ("2026-03-02", "1 March", "2025-10-01"):  # future, not a date, too old
        violations = await fails(c.stub.RecordGroupActivity(pb.RecordGroupActivityRequest(
            group_id="a", day=bad), metadata=c.md()), INVALID)
        assert [p for p, _ in violations] == ["day"]
    violations = await fails(c.stub.RecordGroupActivity(pb.RecordGroupActivityRequest(
        group_id="a", day="2026-03-01", members=[
            pb.MemberMessages(member_id="m1", messages=1),
            pb.MemberMessages(member_id="m1", messages=-1)]), metadata=c.md()), INVALID)
    assert {p for p, _ in violations} == {"members[1].member_id", "members[1].messages"}
    await fails(record(c, "nope", "2026-03-01", m1=1), grpc.StatusCode.NOT_FOUND)
    await fails(c.stub.RecordGroupActivity(pb.RecordGroupActivityRequest(
        group_id="a", day="2026-03-01"), metadata=c.md(Role.GUIDE)),
        grpc.StatusCode.PERMISSION_DENIED)


async def test_check_ins_chain_joins_and_orders_are_attributed_to_groups(
        community: Community):
    c = community
    await c.group("a")
    await c.group("b")
    buyer = await c.register("13900000001")
    await c.join("a", buyer)
    c.clock.advance(hours=1)
    await c.join("b", buyer)  # joined last: the order goes to b
    await c.stub.CheckIn(pb.CheckInRequest(member_id=buyer, group_id="a"), metadata=c.md())
    await c.stub.OpenChain(pb.OpenChainRequest(
        chain_id="ch", group_id="a", product="Cherries", price_fen=19_900, stock=10,
        deadline=c.ts(hours=5)), metadata=c.md(Role.GUIDE))
    await c.stub.JoinChain(pb.JoinChainRequest(chain_id="ch", member_id=buyer, quantity=1,
                                               idempotency_key="k1"), metadata=c.md())
    await c.buy(buyer, "o-1")
    day = "2026-03-01"  # 11:00 in Shanghai
    a = await eventually(lambda: record(c, "a", day),
                         lambda d: d.check_ins == 1 and d.chain_joins == 1)
    assert a.orders == 0
    b = await eventually(lambda: record(c, "b", day), lambda d: d.orders == 1)
    assert (b.check_ins, b.chain_joins) == (0, 0)
    # Eight days on, the join is too old: the next order is no group's, while a
    # member who joined b that day has theirs attributed (OrderPaid events are
    # consumed in stream order, so o-2 was handled when o-3 shows).
    c.clock.advance(days=8)
    await c.buy(buyer, "o-2")
    newcomer = await c.register("13900000002")
    await c.join("b", newcomer)
    await c.buy(newcomer, "o-3")
    later = (c.clock.now() + timedelta(hours=8)).date().isoformat()
    b_later = await eventually(lambda: record(c, "b", later), lambda d: d.orders >= 1)
    assert b_later.orders == 1


async def test_health_diagnoses_and_ranks_worst_first(community: Community):
    c = community
    for gid, store in (("quiet", "s1"), ("lively", "s1"), ("elsewhere", "s2")):
        await c.group(gid, kind=VIP, store_id=store)
        for i in range(20):
            await c.join(gid, f"{gid}-m{i}")
    c.clock.set(datetime(2026, 3, 5, 10, 0, tzinfo=UTC))
    for d in range(5):
        day = f"2026-03-0{d + 1}"
        await record(c, "lively", day, **{f"lively-m{i}": 3 for i in range(12)})
        await record(c, "quiet", day, **{"quiet-m0": 1})
    quiet = await health(c, "quiet")
    assert quiet.phase == pb.GROUP_HEALTH_PHASE_WRONG_TRAFFIC
    assert quiet.evidence["peak_speaker_share"] == 0.05 and quiet.age_days == 5
    assert "routing rule" in quiet.suggestion
    lively = await health(c, "lively")
    assert lively.phase == pb.GROUP_HEALTH_PHASE_HEALTHY
    assert lively.score_7d > quiet.score_7d > 0 and lively.member_count == 20
    ranked = await c.stub.RankGroupsByHealth(pb.RankGroupsByHealthRequest(store_id="s1"),
                                             metadata=c.md(Role.GUIDE))
    assert [g.group_id for g in ranked.groups] == ["quiet", "lively"]
    page = await c.stub.RankGroupsByHealth(pb.RankGroupsByHealthRequest(kind=VIP, page_size=2),
                                           metadata=c.md())
    rest = await c.stub.RankGroupsByHealth(pb.RankGroupsByHealthRequest(
        kind=VIP, page_size=2, page_token=page.next_page_token), metadata=c.md())
    assert [g.group_id for g in page.groups] + [g.group_id for g in rest.groups] == [
        "elsewhere", "quiet", "lively"]
    assert not rest.next_page_token
    # A month on with talk but no transactions: no value.
    c.clock.set(datetime(2026, 4, 2, 10, 0, tzinfo=UTC))
    for d in range(25, 32):
        await record(c, "lively", f"2026-03-{d}", **{f"lively-m{i}": 3 for i in range(12)})
    month = await health(c, "lively")
    assert month.phase == pb.GROUP_HEALTH_PHASE_NO_VALUE
    assert month.evidence["transactions_30d"] == 0
    await fails(health(c, "nope"), grpc.StatusCode.NOT_FOUND)


async def test_a_column_effect_by_weekday(community: Community):
    c = community  # Sunday 1 March 2026
    await c.group("g")
    await record(c, "g", "2026-02-24", m1=5)  # a Tuesday before the column
    await c.stub.CreateColumn(pb.CreateColumnRequest(column_id="tue", column=pb.Column(
        title="Member day", content=pb.ColumnContent(text="Coupons!"),
        recurrence=pb.ColumnRecurrence(cadence=pb.COLUMN_CADENCE_WEEKLY, at_time="10:00",
                                       weekdays=[2]),
        target=pb.ColumnTarget(group_id="g"))), metadata=c.md())
    for when, day in ((datetime(2026, 3, 3, 2, 0, tzinfo=UTC), "2026-03-03"),
                      (datetime(2026, 3, 10, 2, 0, tzinfo=UTC), "2026-03-10")):
        c.clock.set(when)
        c.wake()

        async def posts():
            return (await c.stub.ListColumnPosts(pb.ListColumnPostsRequest(column_id="tue"),
                                                 metadata=c.md())).posts

        await eventually(posts, lambda p, day=day: any(
            x.occurrence_time.ToDatetime(UTC).date().isoformat() == day for x in p))
        await record(c, "g", day, m1=10)
    effect = await c.stub.GetColumnEffect(pb.GetColumnEffectRequest(column_id="tue"),
                                          metadata=c.md(Role.GUIDE))
    assert effect.groups == 1
    tuesday = effect.weekdays[1]
    assert (tuesday.weekday, tuesday.posted_days, tuesday.other_days) == (2, 2, 6)
    assert tuesday.ratio == 12.0  # 10 a posted Tuesday against 5 over 6 other Tuesdays
    assert not effect.weekdays[0].HasField("ratio")
    await fails(c.stub.GetColumnEffect(pb.GetColumnEffectRequest(column_id="tue", weeks=27),
                                       metadata=c.md()), INVALID)
