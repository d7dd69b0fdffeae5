"""`python -m services.member.cron` runs the member service's periodic jobs against a
running service (a Kubernetes CronJob in production): points expiry with reminders,
tier re-evaluation, then birthday gifts. It mints a short-lived service token from the
auth secret."""

from __future__ import annotations

import asyncio
import os
import sys

from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc

from services.member.settings import MemberSettings
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call, call_metadata, channel
from services.runtime.logs import configure_logging, get_logger


async def main() -> int:
    settings = MemberSettings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.member.cron")
    target = os.environ.get("POND_MEMBER_TARGET", f"127.0.0.1:{settings.member_port}")
    md = call_metadata(mint_token(
        settings.auth_config(), "member-cron", Role.SERVICE, 600, audience="pond.member"
    ))
    stub = member_pb2_grpc.MemberServiceStub(channel(target))
    expiry = await call(
        stub.RunPointsExpiry, pb.RunPointsExpiryRequest(), metadata=md, timeout=600, idempotent=True
    )
    tiers = await call(
        stub.EvaluateTiers, pb.EvaluateTiersRequest(), metadata=md, timeout=600, idempotent=True
    )
    gifts = await call(
        stub.GrantBirthdayGifts, pb.GrantBirthdayGiftsRequest(), metadata=md, timeout=600,
        idempotent=True,
    )
    log.info(
        "member jobs done",
        members_gifted=gifts.members_gifted,
        birthday_points=gifts.points_granted,
        members_expired=expiry.members_expired,
        points_expired=expiry.points_expired,
        lots_announced=expiry.lots_announced,
        members_evaluated=tiers.members_evaluated,
        members_downgraded=tiers.members_downgraded,
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
