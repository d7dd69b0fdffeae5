"""`python -m services.tagging.cron`: start a scoring run on a running tagging
service and wait for it (a Kubernetes CronJob in production). Exits non-zero if
the run fails; a run already in progress is not an error."""

from __future__ import annotations

import asyncio
import os
import sys

from pond.tagging.v1 import tagging_pb2 as pb
from pond.tagging.v1 import tagging_pb2_grpc

from services.runtime.auth import Role, mint_token
from services.runtime.clients import call, call_metadata, channel
from services.runtime.errors import FailedPrecondition
from services.runtime.logs import configure_logging, get_logger
from services.tagging.settings import TaggingSettings


async def main() -> int:
    settings = TaggingSettings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pond.tagging.cron")
    target = os.environ.get("POND_TAGGING_TARGET", f"127.0.0.1:{settings.tagging_port}")
    md = call_metadata(mint_token(
        settings.auth_config(), "tagging-cron", Role.SERVICE, 3600, audience="pond.tagging"
    ))
    stub = tagging_pb2_grpc.TaggingServiceStub(channel(target))
    try:
        run = await call(stub.StartScoringRun, pb.StartScoringRunRequest(), metadata=md, timeout=30)
    except FailedPrecondition as err:
        log.info("a scoring run is already in progress", details=err.message)
        return 0
    last = run
    async for progress in stub.WatchScoringRun(
        pb.WatchScoringRunRequest(run_id=run.id), metadata=md, timeout=3600
    ):
        last = progress
    log.info(
        "scoring run ended",
        run_id=run.id,
        state=pb.RunState.Name(last.state),
        gained=last.tags_gained,
        lost=last.tags_lost,
        seconds=last.duration_seconds,
    )
    return 0 if last.state == pb.RUN_STATE_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
