"""Column schedules over a real grpc.aio server: posts at each occurrence in the
brand's time zone, once per group and occurrence however often the timer loop looks
(and with two hosts on one store), to one group or every active group of a kind;
archived columns stop; the dev channel adapter consumes the posts; bad input refused."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import field_mask_pb2
from pond.community.v1 import community_pb2 as pb
from prometheus_client import REGISTRY

from services.community.server import start_community_service
from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    INTEREST,
    VIP,
    Community,
    community_fixture,
    community_settings,
    fails,
    published,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DAILY, WEEKLY, ONCE = (pb.COLUMN_CADENCE_DAILY, pb.COLUMN_CADENCE_WEEKLY,
                       pb.COLUMN_CADENCE_ONCE)


def column(target: pb.ColumnTarget, recurrence: pb.ColumnRecurrence,
           title: str = "New arrivals") -> pb.Column:
    return pb.Column(title=title, content=pb.ColumnContent(
        text="Fresh cherries today", media_url="https://cdn.example/cherries.jpg"),
        recurrence=recurrence, target=target)


async def create(c: Community, column_id: str, col: pb.Column) -> pb.Column:
    return await c.stub.CreateColumn(pb.CreateColumnRequest(column_id=column_id, column=col),
                                     metadata=c.md())


async def posts(c: Community, column_id: str, group_id: str = "") -> list[pb.ColumnPost]:
    reply = await c.stub.ListColumnPosts(pb.ListColumnPostsRequest(
        column_id=column_id, group_id=group_id, page_size=500), metadata=c.md(Role.GUIDE))
    return list(reply.posts)


async def post_events(redis) -> list:
    return [p for name, p in await published(redis) if name == "ColumnPostDue"]


async def moved_to(c: Community, when: datetime, column_id: str, count: int,
                   *hosts) -> list[pb.ColumnPost]:
    """Moves the clock to `when`, wakes the timer loops and waits for `count` posts;
    then lets the loops look again a few times (a second firing would show)."""
    c.clock.set(when)
    for host in hosts or (c.service,):
        host.host.wake_timers_and_jobs()
    found = await eventually(lambda: posts(c, column_id), lambda p: len(p) >= count)
    for _ in range(3):
        for host in hosts or (c.service,):
            assert await host.host.timer_loop.fire_due() == 0
    return found


async def test_a_daily_column_posts_once_per_occurrence_in_the_brand_time_zone(
        community: Community, redis):
    c = community  # clock: 2026-03-01 10:00 in Shanghai
    await c.group("a", wecom_chat_id="wrOgAAA")
    created = await create(c, "arrivals", column(
        pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(cadence=DAILY, at_time="08:00")))
    # 08:00 in Shanghai on 2 March is 00:00 UTC.
    assert created.next_post_time.ToDatetime(UTC) == datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    assert await posts(c, "arrivals") == []
    first = await moved_to(c, datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC), "arrivals", 1)
    assert [(p.group_id, p.chat_id, p.content.text) for p in first] == [
        ("a", "wrOgAAA", "Fresh cherries today")]
    assert first[0].key == "arrivals:a:20260302T0000"
    second = await moved_to(c, datetime(2026, 3, 3, 0, 1, tzinfo=UTC), "arrivals", 2)
    assert len(second) == 2
    got = await c.stub.GetColumn(pb.GetColumnRequest(column_id="arrivals"), metadata=c.md())
    assert got.post_count == 2
    assert got.next_post_time.ToDatetime(UTC) == datetime(2026, 3, 4, 0, 0, tzinfo=UTC)
    events = await eventually(lambda: post_events(redis), lambda e: len(e) >= 2)
    assert sorted(e.key for e in events) == ["arrivals:a:20260302T0000",
                                             "arrivals:a:20260303T0000"]
    assert events[0].chat_id == "wrOgAAA" and events[0].media_url.endswith("cherries.jpg")
    # The dev channel adapter consumed both posts (applied once each).
    applied = lambda: REGISTRY.get_sample_value(  # noqa: E731
        "pond_event_handler_outcomes_total",
        {"consumer": "community-channel", "outcome": "applied"}) or 0
    before = applied()
    c.clock.set(datetime(2026, 3, 4, 0, 0, 5, tzinfo=UTC))
    c.wake()
    await eventually(lambda: post_events(redis), lambda e: len(e) >= 3)
    await eventually(lambda: _value(applied), lambda n: n >= before + 1)


async def _value(probe):
    return probe()


async def test_a_weekly_column_of_a_kind_posts_to_every_active_group_of_it(
        community: Community, redis):
    c = community
    for gid, store in (("v1", "s1"), ("v2", "s1"), ("v3", "s2"), ("v4", "s1")):
        await c.group(gid, kind=VIP, store_id=store)
    await c.group("i1", kind=INTEREST, store_id="s1")
    await c.stub.ArchiveGroup(pb.ArchiveGroupRequest(group_id="v4"), metadata=c.md())
    # Member day: every Tuesday at 10:00 (3 March 2026 is a Tuesday).
    await create(c, "member-day", column(
        pb.ColumnTarget(kind=VIP, store_id="s1"),
        pb.ColumnRecurrence(cadence=WEEKLY, at_time="10:00", weekdays=[2]), "Member day"))
    got = await moved_to(c, datetime(2026, 3, 3, 2, 0, tzinfo=UTC), "member-day", 2)
    assert sorted(p.group_id for p in got) == ["v1", "v2"]
    assert [p.group_id for p in await posts(c, "member-day", "v2")] == ["v2"]
    col = await c.stub.GetColumn(pb.GetColumnRequest(column_id="member-day"), metadata=c.md())
    assert col.next_post_time.ToDatetime(UTC) == datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    # A group that joins the kind later is posted to from the next occurrence on.
    await c.group("v5", kind=VIP, store_id="s1")
    got = await moved_to(c, datetime(2026, 3, 10, 2, 0, tzinfo=UTC), "member-day", 5)
    assert sorted(p.group_id for p in got) == ["v1", "v1", "v2", "v2", "v5"]


async def test_a_one_off_posts_once_and_an_archived_column_stops(community: Community):
    c = community
    await c.group("a")
    once = await create(c, "launch", column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
        cadence=ONCE, once_time=c.ts(hours=2))))
    assert once.HasField("next_post_time")
    await moved_to(c, datetime(2026, 3, 1, 4, 0, tzinfo=UTC), "launch", 1)
    done = await c.stub.GetColumn(pb.GetColumnRequest(column_id="launch"), metadata=c.md())
    assert not done.HasField("next_post_time") and done.post_count == 1
    await create(c, "nightly", column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
        cadence=DAILY, at_time="21:00")))
    archived = await c.stub.ArchiveColumn(pb.ArchiveColumnRequest(column_id="nightly"),
                                          metadata=c.md())
    assert archived.state == pb.COLUMN_STATE_ARCHIVED
    c.clock.set(datetime(2026, 3, 3, 0, 0, tzinfo=UTC))
    c.wake()
    assert await c.service.host.timer_loop.fire_due() == 0
    assert await posts(c, "nightly") == []
    await fails(c.stub.UpdateColumn(pb.UpdateColumnRequest(
        column_id="nightly", column=pb.Column(title="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["title"])), metadata=c.md()),
        grpc.StatusCode.FAILED_PRECONDITION, "COLUMN_ARCHIVED")


async def test_an_update_moves_the_next_post(community: Community):
    c = community
    await c.group("a")
    await create(c, "topic", column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
        cadence=DAILY, at_time="08:00")))
    updated = await c.stub.UpdateColumn(pb.UpdateColumnRequest(
        column_id="topic", column=pb.Column(recurrence=pb.ColumnRecurrence(
            cadence=DAILY, at_time="20:00")),
        update_mask=field_mask_pb2.FieldMask(paths=["recurrence"])), metadata=c.md())
    # 20:00 in Shanghai on 1 March (12:00 UTC): today still.
    assert updated.next_post_time.ToDatetime(UTC) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    c.clock.set(datetime(2026, 3, 2, 0, 30, tzinfo=UTC))  # the old 08:00 passed: nothing
    c.wake()
    got = await moved_to(c, datetime(2026, 3, 2, 0, 30, tzinfo=UTC), "topic", 1)
    assert [p.occurrence_time.ToDatetime(UTC) for p in got] == [
        datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]


async def test_two_hosts_on_one_store_post_once(community: Community, redis, redis_url,
                                                tmp_path):
    c = community
    second = await start_community_service(
        community_settings(tmp_path, redis_url, c.member.target), clock=c.clock, port=0,
        metrics=False)
    try:
        await c.group("a")
        await create(c, "arrivals", column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
            cadence=DAILY, at_time="08:00")))
        for day in (2, 3, 4):
            await moved_to(c, datetime(2026, 3, day, 0, 0, 1, tzinfo=UTC), "arrivals", day - 1,
                           c.service, second)
        assert len(await posts(c, "arrivals")) == 3
        events = await eventually(lambda: post_events(redis), lambda e: len(e) >= 3)
        assert len(events) == 3 and len({e.key for e in events}) == 3
    finally:
        await second.stop(0)


async def test_bad_columns_are_refused(community: Community):
    c = community
    await c.group("a")
    daily = pb.ColumnRecurrence(cadence=DAILY, at_time="08:00")
    cases = [
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence()),
         "column.recurrence.cadence"),
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(cadence=DAILY,
                                                                   at_time="8 am")),
         "column.recurrence.at_time"),
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(cadence=WEEKLY,
                                                                   at_time="08:00")),
         "column.recurrence.weekdays"),
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
            cadence=WEEKLY, at_time="08:00", weekdays=[0])), "column.recurrence.weekdays"),
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
            cadence=ONCE, once_time=c.ts(hours=-1))), "column.recurrence.once_time"),
        (column(pb.ColumnTarget(), daily), "column.target.kind"),
        (column(pb.ColumnTarget(group_id="a", kind=VIP), daily), "column.target"),
        (pb.Column(title="", recurrence=daily, target=pb.ColumnTarget(group_id="a")),
         "column.title"),
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
            cadence=WEEKLY, at_time="08:00", weekdays=[3], starts_on="9999-12-31")),
         "column.recurrence.starts_on"),
        (column(pb.ColumnTarget(group_id="a"), pb.ColumnRecurrence(
            cadence=DAILY, at_time="08:00", starts_on="2026-03-05", ends_on="2026-03-01")),
         "column.recurrence.ends_on"),
    ]
    for col, path in cases:
        violations = await fails(create(c, "", col), INVALID)
        assert path in [p for p, _ in violations], (path, violations)
    await fails(create(c, "x", column(pb.ColumnTarget(group_id="nope"), daily)),
                grpc.StatusCode.NOT_FOUND)
    await fails(c.stub.CreateColumn(pb.CreateColumnRequest(column=column(
        pb.ColumnTarget(group_id="a"), daily)), metadata=c.md(Role.GATEWAY, "m1")),
        grpc.StatusCode.PERMISSION_DENIED)
    await create(c, "dup", column(pb.ColumnTarget(group_id="a"), daily))
    await fails(create(c, "dup", column(pb.ColumnTarget(group_id="a"), daily)),
                grpc.StatusCode.ALREADY_EXISTS, "COLUMN_EXISTS")
    listed = await c.stub.ListColumns(pb.ListColumnsRequest(), metadata=c.md())
    assert [col.id for col in listed.columns] == ["dup"]
    await fails(c.stub.GetColumn(pb.GetColumnRequest(column_id="nope"), metadata=c.md()),
                grpc.StatusCode.NOT_FOUND)


async def test_a_kind_with_more_groups_than_a_batch_is_posted_batch_by_batch_once(
        community: Community, redis, monkeypatch):
    from services.community import columns

    monkeypatch.setattr(columns, "POST_BATCH", 2)  # 5 groups: three firings of one timer
    c = community
    for i in range(5):
        await c.group(f"v{i}", kind=VIP)
    await create(c, "daily", column(pb.ColumnTarget(kind=VIP), pb.ColumnRecurrence(
        cadence=DAILY, at_time="08:00")))
    got = await moved_to(c, datetime(2026, 3, 2, 0, 0, 5, tzinfo=UTC), "daily", 5)
    assert sorted(p.group_id for p in got) == [f"v{i}" for i in range(5)]
    col = await c.stub.GetColumn(pb.GetColumnRequest(column_id="daily"), metadata=c.md())
    assert col.post_count == 5
    assert col.next_post_time.ToDatetime(UTC) == datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    events = await eventually(lambda: post_events(redis), lambda e: len(e) >= 5)
    assert len(events) == 5
