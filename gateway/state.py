"""What the gateway holds while it runs (one per process): the member service's
client and, when POND_COMMUNITY_TARGET names one, the community service's (the
runtime's clients: one channel each, the gateway's own token with role "gateway" for
that service, request id and deadline passed on), Redis and its Lua scripts, the token issuers,
the WeChat adapter and the rate limiter. `open_gateway` builds it and closes it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2_grpc
from pond.community.v1 import community_pb2, community_pb2_grpc
from pond.member.v1 import member_pb2, member_pb2_grpc

from gateway.auth import AccessTokens
from gateway.errors import Problem
from gateway.ratelimit import RateLimiter
from gateway.sessions import RefreshSessions
from gateway.settings import GatewaySettings
from gateway.wechat import WeChat
from gateway.wechat_token import WeChatAccessToken
from services.runtime.auth import Role, audience_of, mint_token
from services.runtime.clients import (
    Channels,
    Client,
    ServiceToken,
    make_client,
    service_config,
)
from services.runtime.redis_conn import connect_redis, wait_for_redis
from services.runtime.redis_scripts import ScriptRegistry

MEMBER_SERVICE = member_pb2.DESCRIPTOR.services_by_name["MemberService"]
# Reads are retried by gRPC on UNAVAILABLE; writes never (a retry could apply twice).
IDEMPOTENT_MEMBER_METHODS = (
    "GetMember", "GetTierProgram", "ListPointsEntries", "ListExpiringPoints",
    "ListStoredValueEntries", "ListOrders", "GetOrder",
)
COMMUNITY_SERVICE = community_pb2.DESCRIPTOR.services_by_name["CommunityService"]
IDEMPOTENT_COMMUNITY_METHODS = (
    "GetGroup", "ListMemberGroups", "GetCheckInStreak", "GetChain",
)
KEY_PREFIX = "pond:gateway:"


@dataclass
class Gateway:
    settings: GatewaySettings
    members: Client[member_pb2_grpc.MemberServiceStub]
    member_health: health_pb2_grpc.HealthStub
    redis: aioredis.Redis
    scripts: ScriptRegistry
    tokens: AccessTokens
    sessions: RefreshSessions
    wechat: WeChat
    wechat_token: WeChatAccessToken
    limiter: RateLimiter
    # None when POND_COMMUNITY_TARGET is empty (a member-only deployment).
    community_client: Client[community_pb2_grpc.CommunityServiceStub] | None = None
    community_health: health_pb2_grpc.HealthStub | None = None
    _program: tuple[float, member_pb2.TierProgram] | None = None

    @property
    def community(self) -> Client[community_pb2_grpc.CommunityServiceStub]:
        """The community service's client; 503 COMMUNITY_NOT_CONFIGURED in a deployment
        without one (a setting, not an outage: no Retry-After)."""
        if self.community_client is None:
            raise Problem(503, "COMMUNITY_NOT_CONFIGURED",
                          "this deployment has no community service")
        return self.community_client

    async def program(self) -> member_pb2.TierProgram:
        """The brand's tier programme, kept POND_TIER_PROGRAM_CACHE_SECONDS (it changes
        a few times a year; every /v1/me needs it)."""
        now = time.monotonic()
        if self._program is not None and self._program[0] > now:
            return self._program[1]
        members = self.members
        program: member_pb2.TierProgram = await members.call(members.stub.GetTierProgram,
                                     member_pb2.GetTierProgramRequest())
        self._program = (now + self.settings.tier_program_cache_seconds, program)
        return program


def gateway_token(settings: GatewaySettings,
                  service: ServiceDescriptor = MEMBER_SERVICE) -> ServiceToken:
    """The gateway's own token toward one service: role "gateway", that service's
    audience only (a token lifted from one call opens no other service)."""
    config = settings.auth_config()
    audience = audience_of(service.full_name)
    return ServiceToken(
        config, "gateway",
        mint=lambda sub, ttl: mint_token(config, sub, Role.GATEWAY, ttl, audience=audience),
    )


@contextlib.asynccontextmanager
async def open_gateway(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    channels = Channels()
    redis = connect_redis(settings.redis_url)
    http = httpx.AsyncClient(timeout=settings.wechat_timeout_seconds)
    try:
        await wait_for_redis(redis)
        scripts = ScriptRegistry(redis, KEY_PREFIX)
        wechat = WeChat(http, settings.wechat_api_base, settings.wechat_app_id,
                        settings.wechat_secret())
        gateway = Gateway(
            settings=settings,
            members=make_client(channels, settings.member_target,
                                member_pb2_grpc.MemberServiceStub, MEMBER_SERVICE,
                                gateway_token(settings), idempotent=IDEMPOTENT_MEMBER_METHODS,
                                deadline_seconds=settings.gateway_deadline_seconds),
            member_health=health_pb2_grpc.HealthStub(channels.get(
                settings.member_target, service_config(MEMBER_SERVICE, IDEMPOTENT_MEMBER_METHODS))),
            redis=redis,
            scripts=scripts,
            tokens=AccessTokens(settings.gateway_token_config(),
                                audience=settings.gateway_token_audience,
                                ttl_seconds=settings.access_token_ttl_seconds),
            sessions=RefreshSessions(scripts, ttl_seconds=settings.refresh_token_ttl_seconds),
            wechat=wechat,
            wechat_token=WeChatAccessToken(wechat, scripts,
                                           settings.wechat_token_refresh_margin_seconds),
            limiter=RateLimiter.from_settings(scripts, settings.rate_limits),
        )
        if settings.community_target:
            gateway.community_client = make_client(
                channels, settings.community_target, community_pb2_grpc.CommunityServiceStub,
                COMMUNITY_SERVICE, gateway_token(settings, COMMUNITY_SERVICE),
                idempotent=IDEMPOTENT_COMMUNITY_METHODS,
                deadline_seconds=settings.gateway_deadline_seconds)
            gateway.community_health = health_pb2_grpc.HealthStub(channels.get(
                settings.community_target,
                service_config(COMMUNITY_SERVICE, IDEMPOTENT_COMMUNITY_METHODS)))
        await scripts.load()
        yield gateway
    finally:
        await http.aclose()
        await channels.close()
        await redis.aclose()
