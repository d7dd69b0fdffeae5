"""The member service's parts, for the runtime's host (services/runtime/host.py):
its store, use cases, servicer and auth rules, the stream it publishes, and its
scheduled maintenance (nightly in the brand's time zone; the RPCs that run the same
work stay as operator tools)."""

from __future__ import annotations

from datetime import time, timedelta

from pond.member.v1 import member_pb2, member_pb2_grpc

from services.member.access import AUTH_RULES, GATEWAY_BEFORE_SIGN_IN
from services.member.api import MemberServicer
from services.member.app import MemberApp
from services.member.events import STREAM
from services.member.service import LoyaltyRules
from services.member.settings import MemberSettings
from services.member.store import MemberStore, open_store
from services.runtime.clock import Clock
from services.runtime.crypto import FieldCipher
from services.runtime.host import HostContext, Service, ServiceSpec, start_service
from services.runtime.hosted import HostedService
from services.runtime.jobs import Job
from services.runtime.schedule import Schedule
from services.runtime.server import ServiceRegistration

SERVICE = member_pb2.DESCRIPTOR.services_by_name["MemberService"]


def registration(servicer: MemberServicer) -> ServiceRegistration:
    return ServiceRegistration(
        descriptor=SERVICE,
        add_to_server=lambda server: member_pb2_grpc.add_MemberServiceServicer_to_server(
            servicer, server
        ),
        rules=AUTH_RULES,
        gateway_before_sign_in=GATEWAY_BEFORE_SIGN_IN,
    )


def jobs(app: MemberApp) -> list[Job]:
    async def lapse_paid_memberships() -> int:
        total = batch = await app.lapse_paid_memberships()
        while batch:
            batch = await app.lapse_paid_memberships()
            total += batch
        return total

    return [
        Job("points-expiry", Schedule.daily(time(3, 0)),
            lambda: app.run_points_expiry(remind_within_days=30), lease_seconds=60),
        Job("tier-evaluation", Schedule.daily(time(3, 20)), app.evaluate_tiers,
            lease_seconds=60),
        Job("birthday-gifts", Schedule.daily(time(0, 30)), app.grant_birthday_gifts,
            lease_seconds=60),
        Job("paid-lapses", Schedule.hourly(minute=5), lapse_paid_memberships),
    ]


async def build(ctx: HostContext[MemberSettings], store: MemberStore | None = None) -> Service:
    settings = ctx.settings
    key = settings.phone_key_b64()
    if not key:
        raise RuntimeError("refusing to start without a phone encryption key (POND_PHONE_KEY)")
    store = store or await open_store(
        sqlite_path=str(settings.data_dir / "member.db"),
        mongodb_uri=settings.mongodb_uri,
        mongodb_db=settings.mongodb_db,
    )
    rules = LoyaltyRules(
        settings.consuming_order_threshold,
        settings.points_per_yuan,
        settings.growth_per_yuan,
        settings.points_valid_days,
        settings.timezone,
    )
    app = MemberApp(
        store, ctx.clock, FieldCipher.from_b64(key), rules, on_commit=ctx.notify_commit,
        idempotency_retention=timedelta(days=settings.idempotency_retention_days),
    )
    return Service(
        registration=registration(MemberServicer(app)),
        publishes=STREAM,
        store=store.docs,  # the host prunes its idempotency records; closed below
        jobs=jobs(app),
        closers=[store.close],
        handle=app,
    )


SPEC = ServiceSpec(
    name="member",
    settings=MemberSettings,
    build=build,
    port=lambda s: s.member_port,
    metrics_port=lambda s: s.member_metrics_port,
    required=lambda s: {"POND_PHONE_KEY": s.phone_key_b64()},
)


class MemberService(HostedService):
    """A running member service (what tests and benchmarks hold)."""

    @property
    def app(self) -> MemberApp:
        return self.handle


async def start_member_service(
    settings: MemberSettings,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    metrics: bool = True,
    store: MemberStore | None = None,
) -> MemberService:
    spec = SPEC
    if store is not None:  # a store made by the caller (tests: replicas over one database)

        async def build_on(ctx: HostContext[MemberSettings]) -> Service:
            return await build(ctx, store)

        spec = ServiceSpec(SPEC.name, SPEC.settings, build_on, SPEC.port, SPEC.metrics_port,
                           SPEC.required)
    return MemberService(
        await start_service(spec, settings, clock=clock, port=port, metrics=metrics)
    )
