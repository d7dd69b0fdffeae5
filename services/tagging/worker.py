"""`python -m services.tagging.worker RUN_ID PARTITION`: one partition of a scoring
run started with StartScoringRun(partitions=N) — a pod of a Kubernetes Indexed Job
(PARTITION from JOB_COMPLETION_INDEX when omitted). Reads and writes the same store
as the service; partition 0 runs inside the service. A partition that waits longer
than POND_TAGGING_PARTITION_TIMEOUT_SECONDS for the others fails; one whose run was
cancelled meanwhile stops and exits 0."""

from __future__ import annotations

import asyncio
import os
import sys

from services.runtime.logs import configure_logging, get_logger
from services.tagging.runs import RunStopped, ScoringRunner
from services.tagging.server import open_engine
from services.tagging.settings import TaggingSettings


async def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    settings = TaggingSettings()
    configure_logging(settings.log_level, settings.log_format)
    partition = int(argv[1] if len(argv) > 1 else os.environ.get("JOB_COMPLETION_INDEX", "0"))
    log = get_logger("pond.tagging.worker")
    engine = await open_engine(settings)
    try:
        runner = ScoringRunner(engine, partition_timeout=settings.tagging_partition_timeout_seconds)
        await runner.execute(argv[0], partition)
    except RunStopped:
        # Cancelled, failed or finished meanwhile: nothing left to do, and a retry of
        # this pod would find the same.
        log.info("run is no longer running; partition stops", run_id=argv[0], partition=partition)
        return 0
    finally:
        await engine.store.close()
    log.info("partition done", run_id=argv[0], partition=partition)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
