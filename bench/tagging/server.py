"""`python -m bench.tagging.server --port-file F`: the tagging service as deployed
(start_tagging_service: engine loaded from the store, event consumer and outbox
relay on REDIS_URL, flush loop, interceptors, auth, one log line per RPC), settings
from POND_* / REDIS_URL in the environment. Writes its port to F once serving and
stops on SIGTERM, like bench.server's processes (whose helpers it uses; --profile
DIR profiles the event loop between SIGUSR1 and SIGUSR2 as there; --patch FILE runs
FILE first, a what-if measured without editing services/)."""

from __future__ import annotations

import argparse
import asyncio
import runpy
import sys

from bench.server import _Profiler, _until_terminated, _write_port
from services.runtime.loop import run


def compact_payloads() -> None:
    """What-if (--compact-payloads): the real-time path's TagsChanged payloads built
    from a list of only the member ids involved. tags_changed_payloads is handed the
    change set renumbered to positions in that short list, so whatever it does per
    member id of the whole index (e.g. an object array of every id) shrinks to the
    members that changed. Same payloads; the service code is not changed on disk."""
    import numpy as np
    from pyroaring import BitMap

    from services.tagging import service
    from services.tagging.engine import TagChangeSet

    original = service.tags_changed_payloads

    def payloads(changes, ids, run_id=""):
        members = BitMap()
        for gained, lost in changes.tags.values():
            members |= gained | lost
        order = np.asarray(members.to_array(), dtype=np.int64)
        short = [ids[i] for i in order.tolist()]
        renumbered = TagChangeSet()
        for name, (gained, lost) in changes.tags.items():
            renumbered.tags[name] = tuple(  # type: ignore[assignment]
                BitMap(np.searchsorted(order, np.asarray(bm.to_array(), np.int64)).tolist())
                for bm in (gained, lost)
            )
        return original(renumbered, short, run_id)

    service.tags_changed_payloads = payloads


async def serve(port_file: str, profiler: _Profiler | None) -> None:
    from services.runtime.logs import configure_logging
    from services.runtime.server import tune_heap_for_serving
    from services.tagging.server import start_tagging_service
    from services.tagging.settings import TaggingSettings

    settings = TaggingSettings()
    configure_logging(settings.log_level, settings.log_format)
    service = await start_tagging_service(settings, port=0, metrics=False)
    tune_heap_for_serving()  # as services.runtime.entrypoint does in production
    if profiler:
        profiler.install(asyncio.get_running_loop())
    _write_port(port_file, service.port)
    await _until_terminated()
    await service.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tagging.server")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--profile", metavar="DIR", help="enable SIGUSR1/SIGUSR2 profiling")
    parser.add_argument("--compact-payloads", action="store_true", help="what-if, see above")
    parser.add_argument("--patch", metavar="FILE", help="run FILE first (what-if)")
    args = parser.parse_args(argv)
    if args.patch:
        runpy.run_path(args.patch, run_name="bench_patch")
    if args.compact_payloads:
        compact_payloads()
    run(serve(args.port_file, _Profiler(args.profile) if args.profile else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
