"""Bearer tokens over real grpc.aio servers: issuer, audience per service, key ids
with a rotation, the algorithm allow-list, expiry, and operator-only methods that a
service token cannot call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import jwt
import pytest
import pytest_asyncio
from pond.member.v1 import member_pb2 as mpb
from pond.member.v1 import member_pb2_grpc
from pond.tagging.v1 import tagging_pb2 as tpb
from pond.tagging.v1 import tagging_pb2_grpc

from services.member.server import start_member_service
from services.runtime.auth import AuthConfig, Role, SigningKey, key_id_of, mint_token
from services.runtime.clients import call_metadata
from services.tagging.server import start_tagging_service
from services.tagging.settings import TaggingSettings
from tests.conftest import TEST_SECRET, member_settings

NEW_SECRET = "rotated-secret-" + "n" * 24


@dataclass
class Services:
    member: member_pb2_grpc.MemberServiceStub
    tagging: tagging_pb2_grpc.TaggingServiceStub


@pytest_asyncio.fixture
async def services(tmp_path) -> AsyncIterator[Services]:
    """A member and a tagging service of one deployment (TEST_SECRET), no Redis."""
    member = await start_member_service(member_settings(tmp_path / "m", ""), port=0,
                                        metrics=False)
    tagging = await start_tagging_service(
        TaggingSettings(data_dir=tmp_path / "t", auth_secret=TEST_SECRET, mode="test"),
        port=0, metrics=False)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in (member, tagging)]
    try:
        yield Services(member_pb2_grpc.MemberServiceStub(channels[0]),
                       tagging_pb2_grpc.TaggingServiceStub(channels[1]))
    finally:
        for channel in channels:
            await channel.close()
        await tagging.stop(0)
        await member.stop(0)


async def code(call) -> grpc.StatusCode:
    """The call's status code (OK when it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def md(token: str) -> tuple:
    return call_metadata(token)


async def member_code(s: Services, token: str) -> grpc.StatusCode:
    return await code(s.member.GetTierProgram(mpb.GetTierProgramRequest(), metadata=md(token)))


async def tagging_code(s: Services, token: str) -> grpc.StatusCode:
    return await code(s.tagging.ListTags(tpb.ListTagsRequest(), metadata=md(token)))


OK, UNAUTHENTICATED = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def test_a_token_names_the_services_it_is_for(services: Services):
    for_member = mint_token(TEST_SECRET, "ops", Role.OPERATOR, audience="pond.member")
    assert await member_code(services, for_member) == OK
    assert await tagging_code(services, for_member) == UNAUTHENTICATED
    for_tagging = mint_token(TEST_SECRET, "ops", Role.OPERATOR, audience="pond.tagging")
    assert await tagging_code(services, for_tagging) == OK
    assert await member_code(services, for_tagging) == UNAUTHENTICATED
    both = mint_token(TEST_SECRET, "ops", Role.OPERATOR, audience=["pond.member", "pond.tagging"])
    assert await member_code(services, both) == await tagging_code(services, both) == OK


async def test_a_token_from_another_issuer_is_refused(services: Services):
    other = AuthConfig(SigningKey(key_id_of(TEST_SECRET), TEST_SECRET), issuer="elsewhere")
    assert await member_code(services, mint_token(other, "ops", Role.OPERATOR)) == UNAUTHENTICATED


async def test_a_token_signed_with_an_unknown_key_id_is_refused(services: Services):
    # The right secret under a key id the service was not given, and another secret.
    unknown = AuthConfig.from_secret(TEST_SECRET, key_id="k-unknown")
    assert await member_code(services, mint_token(unknown, "ops", Role.OPERATOR)) == UNAUTHENTICATED
    stranger = mint_token(NEW_SECRET, "ops", Role.OPERATOR)
    assert await member_code(services, stranger) == UNAUTHENTICATED


def _forged(algorithm: str, key: str | None) -> str:
    now = int(time.time())
    claims = {"iss": "pond", "sub": "ops", "aud": "pond.member", "role": "operator",
              "iat": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm=algorithm,
                      headers={"kid": key_id_of(TEST_SECRET)})


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # (HS512 below)
async def test_only_allowed_algorithms_are_accepted(services: Services):
    assert await member_code(services, _forged("HS256", TEST_SECRET)) == OK
    # alg "none": no signature at all.
    assert await member_code(services, _forged("none", None)) == UNAUTHENTICATED
    # A real HMAC signature with the right key, but not an allowed algorithm.
    assert await member_code(services, _forged("HS512", TEST_SECRET)) == UNAUTHENTICATED


async def test_expired_tokens_are_refused_past_a_small_leeway(services: Services):
    assert await member_code(services, mint_token(TEST_SECRET, "ops", Role.OPERATOR,
                                                  ttl_seconds=-60)) == UNAUTHENTICATED
    # Within the leeway for clock skew between machines (10 s by default).
    assert await member_code(services, mint_token(TEST_SECRET, "ops", Role.OPERATOR,
                                                  ttl_seconds=-3)) == OK
    no_exp = jwt.encode({"iss": "pond", "sub": "ops", "aud": "pond.member", "role": "operator"},
                        TEST_SECRET, headers={"kid": key_id_of(TEST_SECRET)})
    assert await member_code(services, no_exp) == UNAUTHENTICATED


async def test_a_rotated_key_is_accepted_while_listed_as_previous(tmp_path):
    """Rotation: the new key signs; tokens of the old one (now a previous key) still
    work until it is dropped; nobody can sign as the new key with the old secret."""
    old = AuthConfig.from_secret(TEST_SECRET, key_id="k1")
    new = AuthConfig.from_secret(NEW_SECRET, key_id="k2")
    old_token = mint_token(old, "ops", Role.OPERATOR)
    new_token = mint_token(new, "ops", Role.OPERATOR)
    old_secret_as_new = mint_token(AuthConfig.from_secret(TEST_SECRET, key_id="k2"), "ops",
                                   Role.OPERATOR)

    async def codes(**auth) -> list[grpc.StatusCode]:
        settings = member_settings(tmp_path / str(len(auth)), "", **auth)
        service = await start_member_service(settings, port=0, metrics=False)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = member_pb2_grpc.MemberServiceStub(channel)
                return [await code(stub.GetTierProgram(mpb.GetTierProgramRequest(),
                                                       metadata=md(t)))
                        for t in (old_token, new_token, old_secret_as_new)]
        finally:
            await service.stop(0)

    during = await codes(auth_secret=NEW_SECRET, auth_key_id="k2",
                         auth_previous_keys=f"k1:{TEST_SECRET}\n")
    assert during == [OK, OK, UNAUTHENTICATED]
    after = await codes(auth_secret=NEW_SECRET, auth_key_id="k2")
    assert after == [UNAUTHENTICATED, OK, UNAUTHENTICATED]


async def test_service_tokens_cannot_call_operator_only_methods(services: Services):
    operator = mint_token(TEST_SECRET, "ops-1", Role.OPERATOR)
    service = mint_token(TEST_SECRET, "campaign", Role.SERVICE)
    member_id = (await services.member.RegisterMember(mpb.RegisterMemberRequest(
        identities=[mpb.Identity(kind=mpb.IDENTITY_KIND_PHONE, value="13812345678")]),
        metadata=md(service))).member.id
    adjust = mpb.AdjustPointsRequest(member_id=member_id, delta=10, reason="goodwill",
                                     idempotency_key="adj-1")
    program = await services.member.GetTierProgram(mpb.GetTierProgramRequest(),
                                                   metadata=md(operator))
    tier_update = mpb.UpdateTierProgramRequest(program=program)
    tag = tpb.CreateTagRequest(tag=tpb.Tag(name="vip_group", kind=tpb.TAG_KIND_MANUAL))
    # People's decisions: a service (or a scheduled job) is refused ...
    assert await code(services.member.AdjustPoints(adjust, metadata=md(service))) == DENIED
    assert await code(services.member.UpdateTierProgram(tier_update,
                                                        metadata=md(service))) == DENIED
    assert await code(services.tagging.CreateTag(tag, metadata=md(service))) == DENIED
    # ... an operator is not.
    assert await code(services.member.AdjustPoints(adjust, metadata=md(operator))) == OK
    assert await code(services.member.UpdateTierProgram(tier_update,
                                                        metadata=md(operator))) == OK
    assert await code(services.tagging.CreateTag(tag, metadata=md(operator))) == OK
    # The scheduled runs are a machine's work (and an operator's).
    for token in (service, operator):
        assert await code(services.member.RunPointsExpiry(mpb.RunPointsExpiryRequest(),
                                                          metadata=md(token))) == OK
        assert await code(services.tagging.ListScoringRuns(tpb.ListScoringRunsRequest(),
                                                           metadata=md(token))) == OK
