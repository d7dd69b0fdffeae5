"""The server side of the benchmark, one process per server:

    python -m bench.server echo   --port-file F --response-file R
    python -m bench.server member --port-file F   (settings from POND_* / REDIS_URL env)
    python -m bench.server community --port-file F   (likewise)

Each writes its port to --port-file once it is serving and stops on SIGTERM.
With --patch FILE the file runs in the server process before the
service starts: a what-if experiment (say, a cheaper request id) measured without
editing services/. With --profile DIR, SIGUSR1 starts cProfile on the event-loop
thread and SIGUSR2 stops it and writes DIR/<n>.prof, so the runner profiles
exactly its timed window.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import runpy
import signal
import sys
from pathlib import Path

import grpc
from pond.member.v1 import member_pb2

from services.runtime.loop import run

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


def _write_port(path: str, port: int) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(str(port))
    tmp.replace(path)  # atomic: the runner never reads half a number


class _Profiler:
    """SIGUSR1 -> start, SIGUSR2 -> stop and dump DIR/<n>.prof."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.count = 0
        self.profile: cProfile.Profile | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGUSR1, self.start)
        loop.add_signal_handler(signal.SIGUSR2, self.stop)

    def start(self) -> None:
        self.profile = cProfile.Profile()
        self.profile.enable()

    def stop(self) -> None:
        if self.profile is None:
            return
        self.profile.disable()
        self.count += 1
        tmp = self.out_dir / f"{self.count}.prof.tmp"
        self.profile.dump_stats(tmp)
        tmp.replace(self.out_dir / f"{self.count}.prof")
        self.profile = None


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_echo(port_file: str, response_file: str, profiler: _Profiler | None) -> None:
    response = member_pb2.Member.FromString(Path(response_file).read_bytes())

    async def echo(request: member_pb2.GetMemberRequest, context) -> member_pb2.Member:
        return response

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(
                        echo,
                        request_deserializer=member_pb2.GetMemberRequest.FromString,
                        response_serializer=member_pb2.Member.SerializeToString,
                    ),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if profiler:
        profiler.install(asyncio.get_running_loop())
    _write_port(port_file, port)
    await _until_terminated()
    await server.stop(0)


async def serve_service(kind: str, port_file: str, profiler: _Profiler | None,
                        patch: str = "") -> None:
    """The member or community service as `python -m services.<kind>` runs it, on
    port 0 and without the metrics port; `patch` runs first (a what-if)."""
    if patch:
        runpy.run_path(patch, run_name="bench_patch")
    # Imported here so the echo process loads nothing of Pond's.
    from services.runtime.logs import configure_logging
    from services.runtime.server import tune_heap_for_serving

    if kind == "community":
        from services.community.server import SPEC as spec
    else:
        from services.member.server import SPEC as spec
    from services.runtime.host import start_service

    settings = spec.settings()
    configure_logging(settings.log_level, settings.log_format)
    service = await start_service(spec, settings, port=0, metrics=False)
    tune_heap_for_serving()  # as services.runtime.entrypoint does in production
    if profiler:
        profiler.install(asyncio.get_running_loop())
    _write_port(port_file, service.port)
    await _until_terminated()
    await service.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("kind", choices=("echo", "member", "community"))
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--response-file", help="echo: the serialized Member to answer")
    parser.add_argument("--patch", metavar="FILE", help="run FILE first (what-if)")
    parser.add_argument("--profile", metavar="DIR", help="enable SIGUSR1/SIGUSR2 profiling")
    args = parser.parse_args(argv)
    profiler = _Profiler(args.profile) if args.profile else None
    if args.kind == "echo":
        if not args.response_file:
            parser.error("echo needs --response-file")
        run(serve_echo(args.port_file, args.response_file, profiler))
    else:
        run(serve_service(args.kind, args.port_file, profiler, args.patch or ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
