"""Fuzzing the community service over gRPC (tests/integration/fuzzing.py): random and
mutated requests to every method, with an operator token, against a seeded brand
(groups, a pool with its rule, a chain, members). Whatever comes in, the answer is a
deliberate status, never INTERNAL or UNKNOWN. `POND_FUZZ_SEED=<seed>` replays a run."""

from __future__ import annotations

import os
import random

import grpc
from pond.community.v1 import community_pb2 as pb

from services.community.server import SERVICE
from services.runtime.auth import Role
from services.runtime.clients import call_metadata
from tests.conftest import token
from tests.integration.community_harness import Community, community_fixture  # noqa: F401
from tests.integration.fuzzing import Pool, fuzz, targets

SEED = int(os.environ.get("POND_FUZZ_SEED", "20261130"))
REQUESTS_PER_METHOD = 40


async def seed(c: Community) -> Pool:
    pool = Pool()
    members = [await c.register(f"1380000{i:04d}") for i in range(3)]
    await c.buy(members[0], "fz-o-1")
    await c.rule("fz-rule", template=pb.GroupTemplate(kind=pb.GROUP_KIND_STORE, capacity=3,
                                                       entry_rules=pb.EntryRules(
                                                           must_have_bought=True)))
    await c.group("fz-group", capacity=5)
    await c.group("fz-pooled", pool_id="fz-rule")
    await c.join("fz-group", members[0])
    await c.stub.OpenChain(pb.OpenChainRequest(
        chain_id="fz-chain", group_id="fz-group", product="Cherries", price_fen=100, stock=20,
        per_member_limit=3, deadline=c.ts(days=30)), metadata=c.md())
    pool.add("member", *members)
    pool.add("group", "fz-group", "fz-pooled")
    pool.add("rule", "fz-rule")
    pool.add("pool", "fz-rule")
    pool.add("chain", "fz-chain")
    pool.add("segment", "vip")  # tagging is not running: entry rules on it are refused
    pool.add("tag", "vip")
    return pool


async def test_no_request_makes_the_community_service_fail_internally(community: Community):
    c = community
    rng = random.Random(SEED)
    answers, findings = await fuzz(rng, await seed(c), [(c.channel, targets(SERVICE))],
                                   REQUESTS_PER_METHOD, call_metadata(token(Role.OPERATOR)))
    sent = sum(answers.values())
    report = "\n".join(f"{f.path} {f.code.name} ({f.details}): {f.request}"
                       for f in findings[:15])
    assert not findings, f"seed {SEED}: {len(findings)} of {sent} requests failed:\n{report}"
    assert not answers.keys() & {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    assert answers[grpc.StatusCode.OK] > sent // 6, answers
