"""Community events feed tagging's interaction features through the real event path:
the community service publishes joins, leaves, check-ins and chain joins on its
stream (outbox, relay, Redis), tagging's consumer counts each as an interaction day
of the member (interactions_30d / _90d, 0 before), once per event."""

from __future__ import annotations

import grpc
from pond.community.v1 import community_pb2 as pb
from pond.tagging.v1 import tagging_pb2 as tpb

from services.runtime.auth import Role
from tests.conftest import eventually
from tests.integration.community_harness import (  # noqa: F401 (fixture)
    Community,
    Pair,
    community_settings,
    with_tagging_fixture,
)


async def test_joins_leaves_check_ins_and_chain_joins_are_interactions(with_tagging: Pair):
    c, tagging = with_tagging
    member_id = await c.register("13800007777")
    bystander = await c.register("13800008888")

    async def features(mid: str) -> dict[str, float] | None:
        try:
            profile = await tagging.GetMemberProfile(tpb.GetMemberProfileRequest(
                member_id=mid), metadata=c.md())
        except grpc.aio.AioRpcError:
            return None
        return dict(profile.features)

    before = await eventually(lambda: features(member_id), lambda f: f is not None)
    assert before["interactions_30d"] == 0 and before["interactions_90d"] == 0
    await c.group("a")
    await c.join("a", member_id)
    await c.stub.CheckIn(pb.CheckInRequest(member_id=member_id, group_id="a"), metadata=c.md())
    await c.stub.OpenChain(pb.OpenChainRequest(
        chain_id="ch", group_id="a", product="Cherries", price_fen=19_900, stock=10,
        deadline=c.ts(hours=5)), metadata=c.md(Role.GUIDE))
    await c.stub.JoinChain(pb.JoinChainRequest(chain_id="ch", member_id=member_id, quantity=2,
                                               idempotency_key="k1"), metadata=c.md())
    await c.stub.LeaveGroup(pb.LeaveGroupRequest(group_id="a", member_id=member_id),
                            metadata=c.md())
    after = await eventually(lambda: features(member_id),
                             lambda f: f is not None and f["interactions_30d"] >= 4)
    assert after["interactions_30d"] == 4 and after["interactions_90d"] == 4
    # A check-in a day later counts too; the other member has none.
    c.clock.advance(days=1)
    await c.stub.CheckIn(pb.CheckInRequest(member_id=member_id), metadata=c.md())
    await eventually(lambda: features(member_id), lambda f: f["interactions_30d"] == 5)
    other = await eventually(lambda: features(bystander), lambda f: f is not None)
    assert other["interactions_30d"] == 0
