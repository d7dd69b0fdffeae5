"""Check-in and chain orders over a real grpc.aio server: once a day in the brand's
time zone with streaks, idempotent; chains joined, changed, withdrawn with
idempotency keys, never over stock or past the deadline, closed by the guide or by
the timer at the deadline with the order list."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from pond.community.v1 import community_pb2 as pb
from pond.community.v1 import community_pb2_grpc

from services.community.server import start_community_service
from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    community_fixture,
    community_settings,
    fails,
    published,
)

FAILED = grpc.StatusCode.FAILED_PRECONDITION


async def check_in(c: Community, member_id: str, group_id: str = "") -> pb.CheckInResponse:
    return await c.stub.CheckIn(pb.CheckInRequest(member_id=member_id, group_id=group_id),
                                metadata=c.md(Role.GATEWAY, member_id))


async def streak(c: Community, member_id: str) -> pb.CheckInStreak:
    return await c.stub.GetCheckInStreak(pb.GetCheckInStreakRequest(member_id=member_id),
                                         metadata=c.md())


async def test_check_in_once_a_day_with_streaks_in_the_brand_time_zone(community: Community,
                                                                       redis):
    c = community
    await c.group("a")
    await c.join("a", "m1")
    # 23:30 in Shanghai on 3 March (15:30 UTC).
    c.clock.set(datetime(2026, 3, 3, 15, 30, tzinfo=UTC))
    first = await check_in(c, "m1", "a")
    assert not first.already_checked_in
    assert (first.check_in.day, first.check_in.streak, first.check_in.group_id) == (
        "2026-03-03", 1, "a")
    c.clock.advance(minutes=20)  # still 3 March in Shanghai
    second = await check_in(c, "m1")
    assert second.already_checked_in and second.check_in == first.check_in
    c.clock.advance(minutes=20)  # 00:10 on 4 March in Shanghai (16:10 UTC, still 3 March UTC)
    next_day = await check_in(c, "m1")
    assert (next_day.check_in.day, next_day.check_in.streak) == ("2026-03-04", 2)
    s = await streak(c, "m1")
    assert (s.streak, s.best_streak, s.total_days, s.checked_in_today) == (2, 2, 2, True)
    c.clock.advance(days=2)  # 6 March: the 5th was missed
    s = await streak(c, "m1")
    assert (s.streak, s.best_streak, s.checked_in_today) == (0, 2, False)
    after_gap = await check_in(c, "m1")
    assert (after_gap.check_in.streak, after_gap.check_in.best_streak,
            after_gap.check_in.total_days) == (1, 2, 3)
    await fails(check_in(c, "m2", "a"), FAILED, "NOT_IN_GROUP")
    await fails(check_in(c, "m1", "zz"), grpc.StatusCode.NOT_FOUND)
    await fails(c.stub.CheckIn(pb.CheckInRequest(member_id="m2"),
                               metadata=c.md(Role.GATEWAY, "m1")),
                grpc.StatusCode.PERMISSION_DENIED)
    events = await eventually(lambda: published(redis), lambda e: len(e) >= 4)
    checked = [(p.day, p.streak) for n, p in events if n == "CheckedIn"]
    assert checked == [("2026-03-03", 1), ("2026-03-04", 2), ("2026-03-06", 1)]


async def test_a_check_in_after_the_clock_was_set_back_returns_that_days_first(
        community: Community):
    """The day's check-in is found also when the member's last check-in is on a later
    day (a clock set back): the second check-in of a day never counts twice."""
    c = community
    c.clock.set(datetime(2026, 3, 3, 4, 0, tzinfo=UTC))  # 3 March in Shanghai
    first = await check_in(c, "m1")
    c.clock.set(datetime(2026, 3, 4, 4, 0, tzinfo=UTC))
    await check_in(c, "m1")
    c.clock.set(datetime(2026, 3, 3, 5, 0, tzinfo=UTC))  # back to 3 March
    again = await check_in(c, "m1")
    assert again.already_checked_in and again.check_in == first.check_in
    s = await streak(c, "m1")
    assert (s.best_streak, s.total_days) == (2, 2)


async def open_chain(c: Community, chain_id: str = "cherries", **kw) -> pb.Chain:
    fields = dict(group_id="a", product="Cherries 5 jin", price_fen=19_900, stock=5,
                  per_member_limit=3, deadline=c.ts(hours=6), chain_id=chain_id)
    fields.update(kw)
    return await c.stub.OpenChain(pb.OpenChainRequest(**fields), metadata=c.md(Role.GUIDE))


async def join(c: Community, member_id: str, quantity: int, key: str,
               chain_id: str = "cherries") -> pb.ChainEntry:
    return await c.stub.JoinChain(pb.JoinChainRequest(
        chain_id=chain_id, member_id=member_id, quantity=quantity, idempotency_key=key),
        metadata=c.md(Role.GATEWAY, member_id))


async def test_chain_join_change_withdraw_and_close(community: Community, redis):
    c = community
    await c.group("a")
    chain = await open_chain(c)
    assert (chain.state, chain.sold, chain.opened_by) == (pb.CHAIN_STATE_OPEN, 0, "tester")
    e1 = await join(c, "m1", 2, "k1")
    assert (e1.quantity, e1.amount_fen, e1.position) == (2, 39_800, 1)
    assert await join(c, "m1", 2, "k1") == e1  # a replay: the first answer
    await fails(join(c, "m1", 1, "k1"), FAILED, "IDEMPOTENCY_KEY_REUSED")
    await fails(join(c, "m1", 1, "k1b"), FAILED, "CHAIN_ALREADY_JOINED")
    assert (await join(c, "m9", 1, "k1")).member_id == "m9"  # keys are each member's own
    await c.stub.WithdrawChainEntry(pb.WithdrawChainEntryRequest(
        chain_id="cherries", member_id="m9", idempotency_key="k1"), metadata=c.md())
    await fails(join(c, "m2", 4, "k2"), FAILED, "CHAIN_MEMBER_LIMIT")
    await join(c, "m2", 3, "k2")
    await fails(join(c, "m3", 1, "k3"), FAILED, "CHAIN_OVER_STOCK")  # 5 of 5 taken
    changed = await c.stub.ChangeChainEntry(pb.ChangeChainEntryRequest(
        chain_id="cherries", member_id="m1", quantity=1, idempotency_key="k4"),
        metadata=c.md(Role.GATEWAY, "m1"))
    assert (changed.quantity, changed.amount_fen) == (1, 19_900)
    await join(c, "m3", 1, "k3")
    await fails(c.stub.ChangeChainEntry(pb.ChangeChainEntryRequest(
        chain_id="cherries", member_id="m3", quantity=2, idempotency_key="k5"),
        metadata=c.md()), FAILED, "CHAIN_OVER_STOCK")
    withdrawn = await c.stub.WithdrawChainEntry(pb.WithdrawChainEntryRequest(
        chain_id="cherries", member_id="m2", idempotency_key="k6"), metadata=c.md())
    assert withdrawn.state == pb.CHAIN_ENTRY_STATE_WITHDRAWN
    await fails(c.stub.WithdrawChainEntry(pb.WithdrawChainEntryRequest(
        chain_id="cherries", member_id="m2", idempotency_key="k7"), metadata=c.md()),
        FAILED, "CHAIN_ENTRY_NOT_FOUND")
    await fails(join(c, "m1", 1, "kx", chain_id="nope"), grpc.StatusCode.NOT_FOUND,
                "CHAIN_NOT_FOUND")
    await fails(c.stub.JoinChain(pb.JoinChainRequest(chain_id="cherries", member_id="m4",
                                                     quantity=1), metadata=c.md()),
                grpc.StatusCode.INVALID_ARGUMENT)
    mine = await c.stub.GetChain(pb.GetChainRequest(chain_id="cherries"),
                                 metadata=c.md(Role.GATEWAY, "m3"))
    assert [e.member_id for e in mine.entries] == ["m3"] and mine.sold == 2
    closed = await c.stub.CloseChain(pb.CloseChainRequest(chain_id="cherries"),
                                     metadata=c.md(Role.GUIDE))
    assert (closed.state, closed.closed_by, closed.total_fen) == (
        pb.CHAIN_STATE_CLOSED, "guide", 2 * 19_900)
    assert [(e.member_id, e.quantity, e.position) for e in closed.entries] == [
        ("m1", 1, 1), ("m3", 1, 4)]
    assert (await c.stub.CloseChain(pb.CloseChainRequest(chain_id="cherries"),
                                    metadata=c.md())).close_time == closed.close_time
    await fails(join(c, "m4", 1, "k8"), FAILED, "CHAIN_CLOSED")
    listed = await c.stub.ListChains(pb.ListChainsRequest(group_id="a"), metadata=c.md())
    assert [ch.id for ch in listed.chains] == ["cherries"]
    events = await eventually(lambda: published(redis),
                              lambda e: any(n == "ChainClosed" for n, _ in e))
    joins = [(p.member_id, p.quantity) for n, p in events if n == "ChainJoined"]
    assert joins == [("m1", 2), ("m9", 1), ("m2", 3), ("m3", 1)]
    closing = next(p for n, p in events if n == "ChainClosed")
    assert [(ln.member_id, ln.quantity) for ln in closing.lines] == [("m1", 1), ("m3", 1)]
    assert (closing.total_fen, closing.closed_by) == (39_800, "guide")


async def test_bad_chains_are_refused(community: Community):
    c = community
    await c.group("a")
    await fails(open_chain(c, deadline=c.ts(hours=-1)), grpc.StatusCode.INVALID_ARGUMENT)
    violations = await fails(open_chain(c, stock=0, price_fen=0, product=""),
                             grpc.StatusCode.INVALID_ARGUMENT)
    assert {f for f, _ in violations} >= {"stock", "price_fen", "product"}
    await fails(open_chain(c, group_id="zz"), grpc.StatusCode.NOT_FOUND, "GROUP_NOT_FOUND")
    await fails(c.stub.OpenChain(pb.OpenChainRequest(group_id="a", product="x", price_fen=1,
                                                     stock=1, deadline=c.ts(hours=1)),
                                 metadata=c.md(Role.GATEWAY, "m1")),
                grpc.StatusCode.PERMISSION_DENIED)
    await open_chain(c)
    await fails(open_chain(c), grpc.StatusCode.ALREADY_EXISTS, "CHAIN_EXISTS")


async def test_a_chain_closes_at_its_deadline_by_the_timer(community: Community, redis):
    c = community
    await c.group("a")
    await open_chain(c, deadline=c.ts(hours=1))
    await join(c, "m1", 2, "k1")
    c.clock.advance(minutes=59)
    c.wake()
    await join(c, "m2", 1, "k2")
    c.clock.advance(minutes=1)
    await fails(join(c, "m3", 1, "k3"), FAILED, "CHAIN_DEADLINE_PASSED")
    await fails(c.stub.WithdrawChainEntry(pb.WithdrawChainEntryRequest(
        chain_id="cherries", member_id="m1", idempotency_key="k4"), metadata=c.md()),
        FAILED, "CHAIN_DEADLINE_PASSED")
    c.wake()

    async def get():
        return await c.stub.GetChain(pb.GetChainRequest(chain_id="cherries"), metadata=c.md())

    closed = await eventually(get, lambda ch: ch.state == pb.CHAIN_STATE_CLOSED)
    assert closed.closed_by == "deadline" and closed.close_time == closed.deadline
    assert [(e.member_id, e.quantity) for e in closed.entries] == [("m1", 2), ("m2", 1)]
    events = await eventually(lambda: published(redis),
                              lambda e: any(n == "ChainClosed" for n, _ in e))
    closing = next(p for n, p in events if n == "ChainClosed")
    assert (closing.closed_by, closing.total_quantity, closing.total_fen) == (
        "deadline", 3, 3 * 19_900)


async def test_a_deadline_passed_while_the_service_was_down_closes_at_start(
        community: Community, tmp_path, redis_url: str):
    c = community
    await c.group("a")
    await open_chain(c, deadline=c.ts(hours=1))
    await join(c, "m1", 2, "k1")
    await c.service.stop(0)
    await c.channel.close()
    c.clock.advance(hours=2)
    c.service = await start_community_service(
        community_settings(tmp_path, redis_url, c.member.target), clock=c.clock, port=0,
        metrics=False)
    c.channel = grpc.aio.insecure_channel(f"127.0.0.1:{c.service.port}")
    c.stub = community_pb2_grpc.CommunityServiceStub(c.channel)

    async def get():
        return await c.stub.GetChain(pb.GetChainRequest(chain_id="cherries"), metadata=c.md())

    closed = await eventually(get, lambda ch: ch.state == pb.CHAIN_STATE_CLOSED)
    assert closed.closed_by == "deadline" and [e.quantity for e in closed.entries] == [2]


async def test_a_merged_members_chain_entries_move_to_the_survivor(community: Community, redis):
    """MembersMerged: m-old's entries in open chains become m-new's (one entry where
    both had joined, in the earlier place), sold stays, and the survivor can change
    and withdraw them; a closed chain's order list is left as it was."""
    from pond.events.v1 import member_events_pb2 as mev

    from services.runtime.eventbus import make_event, stream_for

    c = community
    await c.group("a")
    await open_chain(c, "both", stock=10)
    await open_chain(c, "only-old", stock=10)
    await open_chain(c, "closed", stock=10)
    await join(c, "m-old", 2, "k1", "both")
    await join(c, "m-new", 3, "k2", "both")
    await join(c, "m-old", 1, "k3", "only-old")
    await join(c, "m-old", 1, "k4", "closed")
    await c.stub.CloseChain(pb.CloseChainRequest(chain_id="closed"), metadata=c.md(Role.GUIDE))
    merged = make_event("member", "m-new", mev.MembersMerged(
        surviving_id="m-new", merged_id="m-old", cause="phone"), c.clock.now())
    for _ in range(2):  # delivered twice: applied once
        await redis.xadd(stream_for("member"), {b"e": merged.SerializeToString()})

    async def entries(chain_id):
        chain = await c.stub.GetChain(pb.GetChainRequest(chain_id=chain_id), metadata=c.md())
        return chain.sold, [(e.member_id, e.quantity, e.position) for e in chain.entries]

    assert await eventually(lambda: entries("only-old"), lambda e: e == (1, [("m-new", 1, 1)]))
    assert await entries("both") == (5, [("m-new", 5, 1)])
    assert await entries("closed") == (1, [("m-old", 1, 1)])
    # The survivor holds them now: a change within stock, and a withdrawal.
    changed = await c.stub.ChangeChainEntry(pb.ChangeChainEntryRequest(
        chain_id="only-old", member_id="m-new", quantity=2, idempotency_key="k5"),
        metadata=c.md(Role.GATEWAY, "m-new"))
    assert changed.quantity == 2
    await c.stub.WithdrawChainEntry(pb.WithdrawChainEntryRequest(
        chain_id="both", member_id="m-new", idempotency_key="k6"),
        metadata=c.md(Role.GATEWAY, "m-new"))
    assert await entries("both") == (0, [])
    await fails(c.stub.WithdrawChainEntry(pb.WithdrawChainEntryRequest(
        chain_id="only-old", member_id="m-old", idempotency_key="k7"),
        metadata=c.md(Role.GATEWAY, "m-old")), FAILED, "CHAIN_ENTRY_NOT_FOUND")


async def test_a_merged_members_check_ins_join_the_survivors_streak(community: Community, redis):
    """MembersMerged: the two records' check-in days make one streak, and a day one
    record checked in counts for the survivor (a second check-in returns the first)."""
    from pond.events.v1 import member_events_pb2 as mev

    from services.runtime.eventbus import make_event, stream_for

    c = community
    await check_in(c, "m-old")  # day 1 on the old record
    c.clock.advance(days=1)
    await check_in(c, "m-new")  # day 2 on the new one
    c.clock.advance(days=1)
    await check_in(c, "m-old")  # day 3 on the old record again
    merged = make_event("member", "m-new", mev.MembersMerged(
        surviving_id="m-new", merged_id="m-old", cause="phone"), c.clock.now())
    for _ in range(2):  # delivered twice: applied once
        await redis.xadd(stream_for("member"), {b"e": merged.SerializeToString()})

    async def streak():
        s = await c.stub.GetCheckInStreak(pb.GetCheckInStreakRequest(member_id="m-new"),
                                          metadata=c.md())
        return s.streak, s.best_streak, s.total_days, s.checked_in_today

    assert await eventually(streak, lambda s: s == (3, 3, 3, True))
    again = await check_in(c, "m-new")
    assert again.already_checked_in and again.check_in.streak == 3
