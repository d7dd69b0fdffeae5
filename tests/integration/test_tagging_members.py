"""What tagging learns from member events, over a real grpc.aio tagging service fed
by a real member service through Redis (see test_tagging_api.py): the profile
before the member is known, lifecycle of imported history, the profile as the
README documents it (every tag's `since`, the features and scores), and the bound
on order categories."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest
from pond.member.v1 import member_pb2 as mpb
from pond.tagging.v1 import tagging_pb2 as pb

from services.runtime.errors import error_details
from tests.conftest import eventually
from tests.integration import test_tagging_api as tagging_api
from tests.integration.test_tagging_api import (
    MANUAL,
    RULE,
    SCORE,
    SUCCEEDED,
    Stack,
    create_tag,
    populate,
    profile,
    register,
    run_to_end,
)

stack = tagging_api.stack  # the fixture: a member and a tagging service on one Redis
README = Path(__file__).resolve().parents[2] / "README.md"


async def record_order(
    s: Stack, member_id: str, order_id: str, fen: int, categories=("skincare",), days_ago=0
) -> None:
    await s.member.stub.RecordOrder(
        mpb.RecordOrderRequest(
            order_id=order_id,
            member_id=member_id,
            channel=4,
            amount_fen=fen,
            items=[
                mpb.OrderItem(sku=f"sku-{c}", category=c, quantity=1, unit_price_fen=fen)
                for c in categories
            ],
            paid_time=s.clock.now() - timedelta(days=days_ago),
        ),
        metadata=s.member.md(),
    )


def readme_table(header: str) -> list[str]:
    """The first-column names (in backticks) of the README table whose header row
    starts with `header`."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.append(re.match(r"\| `([a-z0-9_]+)` \|", line).group(1))
    return names


def day_start(s: Stack, when: datetime) -> datetime:
    local = when.astimezone(ZoneInfo(s.settings.timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


# -- a member registered a moment ago ---------------------------------------


async def test_profile_of_a_member_whose_event_is_on_its_way_says_so(stack: Stack):
    await stack.restart(redis_url="")  # no consumer: the event stays on its way
    member_id = await register(stack, 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GetMemberProfile(
            pb.GetMemberProfileRequest(member_id=member_id), metadata=stack.md()
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_details(info.value)[0] == "MEMBER_NOT_KNOWN_YET"
    assert member_id in info.value.details() and "events" in info.value.details()
    await stack.restart()  # the consumer reads the event it missed
    p = await eventually(lambda: profile(stack, member_id), lambda p: p is not None)
    assert [t.name for t in p.tags] == ["lifecycle:new"]


# -- lifecycle of imported history -------------------------------------------


async def test_imported_history_gets_the_lifecycle_of_its_first_known_activity(stack: Stack):
    """Members registered today whose orders are old (an import) are classified by
    their first order, not as new; the real-time path and a run agree."""
    ages = {"churned": 500, "sleeping": 100, "new": 10}
    members = {}
    for i, (stage, days_ago) in enumerate(ages.items()):
        members[stage] = await register(stack, i)
        await record_order(stack, members[stage], f"o-{stage}", 10_000, days_ago=days_ago)
    for stage, member_id in members.items():
        p = await eventually(
            lambda m=member_id: profile(stack, m),
            lambda p: p is not None and p.features["orders_total"] == 1,
        )
        assert p.features["days_since_registered"] == 0
        assert p.scores["lifecycle"] == stage
        assert {t.name for t in p.tags if t.name.startswith("lifecycle:")} == {
            f"lifecycle:{stage}"
        }
    assert (await run_to_end(stack)).state == SUCCEEDED
    for stage, member_id in members.items():
        assert (await profile(stack, member_id)).scores["lifecycle"] == stage


# -- the profile as documented ------------------------------------------------


async def test_every_profile_tag_has_since_and_features_and_scores_are_the_readme_ones(
    stack: Stack,
):
    await create_tag(stack, "vip")
    await create_tag(stack, "buyer", RULE, "orders_total >= 1")
    await create_tag(stack, "big", RULE, "spend_total >= 20000")
    (a,) = await populate(stack, [1])
    await stack.stub.AssignTags(
        pb.AssignTagsRequest(member_ids=[a], tag_names=["vip"]), metadata=stack.md()
    )
    assigned = stack.clock.now()
    assert (await run_to_end(stack)).state == SUCCEEDED  # RFM and quadrant
    first_day = day_start(stack, stack.clock.now())

    p = await profile(stack, a)
    assert {t.kind for t in p.tags} == {MANUAL, RULE, SCORE}
    since = {t.name: t.since.ToDatetime(tzinfo=UTC) for t in p.tags if t.HasField("since")}
    assert set(since) == {t.name for t in p.tags}
    assert since["vip"] == assigned
    assert {n for n, at in since.items() if at == first_day} == {t.name for t in p.tags} - {
        "vip"
    }
    assert set(p.features) == set(readme_table("feature"))
    assert set(p.scores) == set(readme_table("score"))
    assert all(p.scores.values())  # scored: in real time and by the run

    # A tag gained later carries its own day; the others keep theirs.
    stack.clock.advance(days=2)
    await record_order(stack, a, "o-big", 15_000)
    p = await eventually(lambda: profile(stack, a), lambda p: "big" in {t.name for t in p.tags})
    since = {t.name: t.since.ToDatetime(tzinfo=UTC) for t in p.tags}
    assert since["big"] == day_start(stack, stack.clock.now()) == first_day + timedelta(days=2)
    assert since["buyer"] == first_day and since["vip"] == assigned
    # ...and survives a restart.
    await stack.restart()
    assert {t.name: t.since.ToDatetime(tzinfo=UTC) for t in (await profile(stack, a)).tags} == (
        since
    )


# -- order categories ---------------------------------------------------------


async def test_order_categories_past_the_limit_are_counted_but_not_tagged(stack: Stack):
    await stack.restart(tagging_max_categories=5)
    member_id = await register(stack, 1)
    names = [f"cat-{i:02d}" for i in range(24)]
    await record_order(stack, member_id, "o-1", 12_000, names[:12])
    await record_order(stack, member_id, "o-2", 13_000, names[12:])
    p = await eventually(
        lambda: profile(stack, member_id),
        lambda p: p is not None and p.features["orders_total"] == 2,
    )
    assert p.features["spend_total"] == 25_000  # every order counts in full

    async def repurchase_tags() -> list[str]:
        reply = await stack.stub.ListTags(
            pb.ListTagsRequest(kind=SCORE, group="repurchase", page_size=100), metadata=stack.md()
        )
        return [t.name for t in reply.tags]

    async def categories() -> pb.ListCategoryCyclesResponse:
        return await stack.stub.ListCategoryCycles(
            pb.ListCategoryCyclesRequest(), metadata=stack.md()
        )

    assert await repurchase_tags() == [f"repurchase_due:{n}" for n in names[:5]]
    listed = await categories()
    assert [c.category for c in listed.cycles] == names[:5]
    assert list(listed.untracked_categories) == names[5:]

    async def count(expression: str) -> int:
        reply = await stack.stub.PreviewSegment(
            pb.PreviewSegmentRequest(expression=expression), metadata=stack.md()
        )
        return reply.count

    assert await count('category_orders("cat-00") >= 1') == 1
    assert await count('category_orders("cat-07") >= 1') == 0  # untracked: no statistics

    # An operator admits one past the limit.
    await stack.stub.SetCategoryCycle(
        pb.SetCategoryCycleRequest(category="cat-20", days=0), metadata=stack.md()
    )
    await record_order(stack, member_id, "o-3", 1_000, ["cat-20", "cat-21"])
    await eventually(lambda: profile(stack, member_id), lambda p: p.features["orders_total"] == 3)
    assert await count('category_orders("cat-20") >= 1') == 1
    await stack.restart(tagging_max_categories=5)
    expected = sorted([*names[:5], "cat-20"])
    assert await repurchase_tags() == [f"repurchase_due:{n}" for n in expected]
    listed = await categories()
    assert [c.category for c in listed.cycles] == expected
    assert list(listed.untracked_categories) == [n for n in names[5:] if n != "cat-20"]
    every_score = await stack.stub.ListTags(
        pb.ListTagsRequest(kind=SCORE, page_size=100), metadata=stack.md()
    )
    assert len(every_score.tags) == 8 + 5 + 4 + len(expected)  # RFM, lifecycle, quadrant


async def test_a_member_event_delivered_again_is_applied_once(stack: Stack, redis):
    """At-least-once delivery: the same OrderPaid on the member stream again (as after
    a relay that published twice), before and after a restart, counts once, also once
    the consumer's short-lived Redis marks are gone: tagging's marks of applied events
    live in its store, written with the change."""
    from pond.events.v1 import event_pb2

    from services.tagging.events import MEMBER_STREAM

    [member_id] = await populate(stack, [1])

    async def order_paid_entry() -> dict:
        for _id, fields in await redis.xrange(MEMBER_STREAM):
            if event_pb2.Event.FromString(fields[b"e"]).type.endswith("OrderPaid"):
                return fields
        raise AssertionError("no OrderPaid on the member stream")

    async def applied_up_to(fen: int) -> pb.MemberProfile:
        """The profile once the order of `fen` (the last one recorded) counts: events
        are applied in stream order, so the copy before it has been seen too."""
        return await eventually(
            lambda: profile(stack, member_id),
            lambda p: p.features["spend_total"] % 10 ** len(str(fen)) == fen,
        )

    async def publish_again(fields: dict) -> None:
        for key in await redis.keys("pond:consumed:*"):  # expired (they have a TTL)
            await redis.delete(key)
        await redis.xadd(MEMBER_STREAM, fields)

    duplicate = await order_paid_entry()  # of 10,000 fen
    await publish_again(duplicate)
    await record_order(stack, member_id, "o-after-copy", 3_000)
    p = await applied_up_to(3_000)
    assert (p.features["orders_total"], p.features["spend_total"]) == (2, 13_000)
    await stack.restart()
    await publish_again(duplicate)
    await record_order(stack, member_id, "o-after-restart", 700)
    p = await applied_up_to(700)
    assert (p.features["orders_total"], p.features["spend_total"]) == (3, 13_700)
