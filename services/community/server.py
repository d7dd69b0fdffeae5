"""The community service's parts, for the runtime's host (services/runtime/host.py):
its store, the clients of the member and tagging services, the use cases, servicer
and auth rules, the stream it publishes, the member stream it reads (merged members'
groups move to the surviving member) and its timers (flash groups ending, chains
closing at their deadline)."""

from __future__ import annotations

from datetime import timedelta

from pond.community.v1 import community_pb2, community_pb2_grpc
from pond.events.v1 import member_events_pb2 as mev
from pond.member.v1 import member_pb2, member_pb2_grpc
from pond.tagging.v1 import tagging_pb2, tagging_pb2_grpc

from services.community.activity import Activity
from services.community.api import AUTH_RULES, CommunityServicer, UseCases
from services.community.chains import CHAIN_DEADLINE, Chains
from services.community.channels import LoggingChannel, channel_consumer
from services.community.checkin import CheckIns
from services.community.columns import COLUMN_DUE, Columns
from services.community.events import MEMBER_STREAM, STREAM
from services.community.graduation import Graduation
from services.community.groups import GROUP_END, Groups
from services.community.membership import Membership
from services.community.merges import Merges
from services.community.peers import Peers
from services.community.routing import Routing
from services.community.settings import CommunitySettings
from services.community.store import SCHEMA
from services.community.wecom.crypto import WeComCrypto
from services.community.wecom.receiver import CallbackServer, callback_app
from services.community.wecom_sync import WECOM_EVENT, WeComSync
from services.community.writes import Writes
from services.runtime.clock import Clock
from services.runtime.events import EventHandlers
from services.runtime.host import Consumer, HostContext, Service, ServiceSpec, start_service
from services.runtime.hosted import HostedService
from services.runtime.server import ServiceRegistration
from services.runtime.supervision import Task

SERVICE = community_pb2.DESCRIPTOR.services_by_name["CommunityService"]
MEMBER_SERVICE = member_pb2.DESCRIPTOR.services_by_name["MemberService"]
TAGGING_SERVICE = tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"]


async def build(ctx: HostContext[CommunitySettings]) -> Service:
    settings = ctx.settings
    store = await ctx.open_store(SCHEMA)
    peers = Peers(
        members=ctx.client(settings.community_member_target, member_pb2_grpc.MemberServiceStub,
                           MEMBER_SERVICE, idempotent=["GetMember", "FindMember"]),
        tagging=ctx.client(settings.community_tagging_target,
                           tagging_pb2_grpc.TaggingServiceStub, TAGGING_SERVICE,
                           idempotent=["GetMemberProfile", "CheckMembership"]),
    )
    writes = Writes(store, ctx.clock, settings.timezone)
    membership = Membership(writes, peers)
    groups = Groups(writes)
    routing = Routing(writes, membership)
    uc = UseCases(
        groups=groups,
        membership=membership,
        routing=routing,
        check_ins=CheckIns(writes),
        chains=Chains(writes, timedelta(days=settings.idempotency_retention_days)),
        columns=Columns(writes),
        wecom=WeComSync(writes, membership, groups, peers),
        activity=Activity(writes),
        graduation=Graduation(writes, membership, routing),
    )
    tasks = []
    wecom = settings.wecom_callback()
    if wecom is not None:
        uc.callbacks = CallbackServer(callback_app(WeComCrypto(*wecom), uc.wecom.receive),
                                      settings.host, settings.community_callback_port)
        tasks.append(Task("wecom-callbacks", uc.callbacks.run, required=True))
    consumers = uc.activity.consumers(store, ctx.clock)
    if settings.community_channel == "log":
        consumers.append(channel_consumer(LoggingChannel(), store, ctx.clock))
    servicer = CommunityServicer(uc)
    return Service(
        registration=ServiceRegistration(
            SERVICE,
            lambda server: community_pb2_grpc.add_CommunityServiceServicer_to_server(
                servicer, server),
            AUTH_RULES,
        ),
        store=store,
        publishes=STREAM,
        consumers=[*consumers, Consumer(MEMBER_STREAM, EventHandlers(
            ctx.name, store, ctx.clock).on(mev.MembersMerged, Merges(writes).on_members_merged))],
        timers={GROUP_END: uc.groups.on_group_end, CHAIN_DEADLINE: uc.chains.on_deadline,
                COLUMN_DUE: uc.columns.on_due, WECOM_EVENT: uc.wecom.on_event},
        tasks=tasks,
        handle=uc,
    )


SPEC = ServiceSpec(
    name="community",
    settings=CommunitySettings,
    build=build,
    port=lambda s: s.community_port,
    metrics_port=lambda s: s.community_metrics_port,
)


class CommunityService(HostedService):
    """A running community service (what tests and benchmarks hold)."""

    @property
    def use_cases(self) -> UseCases:
        return self.handle


async def start_community_service(
    settings: CommunitySettings,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    metrics: bool = True,
) -> CommunityService:
    return CommunityService(
        await start_service(SPEC, settings, clock=clock, port=port, metrics=metrics)
    )
