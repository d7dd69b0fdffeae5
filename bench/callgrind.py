"""`python -m bench.callgrind [--calls N]`: instructions per call of the hot RPCs,
counted by valgrind's callgrind in the live server, against the bare grpc.aio echo
server driven the same way: a figure that other work on a shared machine does not
move (calls/s and CPU time there vary by 10% or more from one process to the next).

Each server runs under `valgrind --tool=callgrind --instr-atstart=no` (its threads
included; the kernel's share of a call is not counted), gets 300 untimed calls, then
the instrumentation is switched on (`callgrind_control -i on`) for N calls, 16 at a
time, and off again. Servers: echo answering a Member and the member service with
500 members registered first (GetMember; RecordOrder of 1-3 items), echo with
CheckMembership's answer size, the tagging
service on a 10,000-member brand (CheckMembership, three segments, a service token),
echo with the community bench's answer, and the community service with 100 groups
(RouteMember of new members over the bench's 25 pools; CheckIn of new members).

Instructions are not time: SQLite's and the kernel's waits, cache misses and the GIL
hand-offs between threads are not in them, and a server's timed background work
(relay polls, consumer reads) is counted at valgrind's speed, ~50x slower than
native, so it weighs more per call here (~16,000 instructions in the tagging
service). CheckMembership's instruction ratio to echo matched its CPU-per-call ratio
(70% against 68-72%); RouteMember's is lower than its CPU ratio (its writer batches
are smaller at valgrind's speed). Use it to compare two versions of the code, not
as the goals' figure. Needs valgrind (Debian: `apt-get install valgrind`);
results go to bench/results/callgrind.json."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from pond.community.v1 import community_pb2_grpc
from pond.member.v1 import member_pb2 as mpb
from pond.member.v1 import member_pb2_grpc
from pond.tagging.v1 import tagging_pb2 as tpb
from pond.tagging.v1 import tagging_pb2_grpc

from bench import community as bench_community
from bench import workload
from bench.runner import CHANNEL_OPTIONS, ROOT, _server_env
from bench.server import ECHO_METHOD
from services.runtime.auth import Role, mint_token
from services.runtime.clients import call_metadata
from services.runtime.redis_conn import EmbeddedValkey

TAGGING_MEMBERS = 10_000
MEMBERS = 500  # registered in the member service before its calls are counted
WARM_CALLS = 300
CONCURRENCY = 16
RESULTS = ROOT / "bench" / "results" / "callgrind.json"
SERVERS_IN_ORDER = ("member", "tagging", "community")
SERVERS = frozenset(SERVERS_IN_ORDER)


class Counted:
    """One server process under callgrind, instrumentation off until `counting`."""

    def __init__(self, workdir: Path, env: dict[str, str], args: list[str]) -> None:
        self.workdir, self.port_file = workdir, workdir / "port"
        self.out = workdir / "callgrind.out"
        workdir.mkdir(parents=True)
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={self.out}", sys.executable, *args,
             "--port-file", str(self.port_file)],
            cwd=ROOT, env=env, stdout=open(workdir / "stdout", "wb"),
            stderr=open(workdir / "stderr", "wb"))

    async def port(self, timeout: float = 600.0) -> int:
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "stderr").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server under valgrind did not start:\n{tail}")
            await asyncio.sleep(0.5)
        return int(self.port_file.read_text())

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)],
                       check=True, capture_output=True)

    async def count(self, call: Callable[[], Any], calls: int) -> float:
        """Instructions per call over `calls` calls (after the warm-up)."""
        await _burst(call, WARM_CALLS)
        before = set(self.workdir.glob("callgrind.out*"))
        self._control("-i", "on")
        await _burst(call, calls)
        self._control("-i", "off")
        self._control("-d")  # writes callgrind.out.<n>: what was counted since the last dump
        return self._total(set(self.workdir.glob("callgrind.out*")) - before) / calls

    @staticmethod
    def _total(dumps: set[Path]) -> int:
        total = 0
        for dump in dumps:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _burst(call: Callable[[], Any], calls: int) -> None:
    left = iter(range(calls))

    async def worker() -> None:
        for _ in left:
            await call()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _measure(workdir: Path, calls: int, say, servers: frozenset[str] = SERVERS,
                   patch: str = "") -> list[dict]:
    from bench.tagging import dataset
    from bench.tagging.brand import CHECKED_SEGMENTS
    from bench.tagging.cli import SEED
    from bench.tagging.synth import member_id
    from services.tagging.store import SQLITE_FILE

    secret = secrets.token_urlsafe(32)
    phone_key = base64.b64encode(secrets.token_bytes(32)).decode()
    valkey = EmbeddedValkey(workdir / "valkey").start()
    rows: list[dict] = []
    try:
        say(f"a brand of {TAGGING_MEMBERS:,} members, 100 groups ...")
        pristine, _ = await dataset.pristine(workdir / "cache", TAGGING_MEMBERS, SEED,
                                             lambda _: None)
        (workdir / "tagging").mkdir()
        shutil.copy(pristine, workdir / "tagging" / SQLITE_FILE)
        await bench_community.seed(workdir / "community", 100, random.Random(SEED))
        check_answer = tpb.CheckMembershipResponse(
            memberships={s: i % 2 == 0 for i, s in enumerate(CHECKED_SEGMENTS)})
        (workdir / "echo-tagging.bin").write_bytes(
            mpb.Member(id="e" * (check_answer.ByteSize() - 2)).SerializeToString())
        (workdir / "echo-community.bin").write_bytes(bench_community._echo_answer())
        service_md = call_metadata(mint_token(secret, "bench-campaign", Role.SERVICE))
        operator_md = call_metadata(mint_token(secret, "bench-operator", Role.OPERATOR))
        rng = random.Random(SEED)
        tag = secrets.token_hex(3)

        def env(data: str, db: int) -> dict[str, str]:
            url = valkey.url_of(db)
            return _server_env(workdir / data, url, secret, phone_key, "info", {
                "POND_COMMUNITY_MEMBER_TARGET": "127.0.0.1:9",
                "POND_COMMUNITY_TAGGING_TARGET": "127.0.0.1:8",
                "POND_COMMUNITY_CALLBACK_PORT": "0", "POND_OUTBOX_POLL_SECONDS": "1.0"})

        def check() -> tpb.CheckMembershipRequest:
            return tpb.CheckMembershipRequest(
                member_id=member_id(rng.randrange(TAGGING_MEMBERS)), segment_ids=CHECKED_SEGMENTS)

        requests = bench_community.Requests()
        route, check_in, echo_request = requests.route, requests.check_in, requests.echo

        member_ids: list[str] = []

        async def register(channel: grpc.aio.Channel) -> None:
            stub = member_pb2_grpc.MemberServiceStub(channel)
            for i in range(MEMBERS):
                reply = await stub.RegisterMember(workload.register_request(i, rng),
                                                  metadata=operator_md, timeout=120)
                member_ids.append(reply.member.id)

        def get_member() -> mpb.GetMemberRequest:
            return mpb.GetMemberRequest(member_id=rng.choice(member_ids))

        orders = workload.record_order_requests(member_ids, rng, tag)
        (workdir / "echo-member.bin").write_bytes(workload.echo_member(mpb.Member(
            id="m" * 26, store_id="store-001", guide_id="guide-0001", tier_level=1,
            tier_name="Silver")).SerializeToString())
        echo = ["-m", "bench.server", "echo", "--response-file"]
        # Per service: its echo (its baseline, with the same answer size) and itself;
        # each (label, server args, env, [(method, make request, metadata, stub maker)]).
        plans = {
            "member": [
                ("echo (a Member)", [*echo, str(workdir / "echo-member.bin")], env("member", 3),
                 [("echo", echo_request, operator_md, None)]),
                ("member", ["-m", "bench.server", "member"], env("member", 3),
                 [("GetMember", get_member, operator_md, member_pb2_grpc.MemberServiceStub),
                  ("RecordOrder", orders, operator_md, member_pb2_grpc.MemberServiceStub)]),
            ],
            "tagging": [
                ("echo (CheckMembership's answer)", [*echo, str(workdir / "echo-tagging.bin")],
                 env("tagging", 1), [("echo", check, service_md, None)]),
                ("tagging", ["-m", "bench.tagging.server"], env("tagging", 1),
                 [("CheckMembership", check, service_md, tagging_pb2_grpc.TaggingServiceStub)]),
            ],
            "community": [
                ("echo (the community bench's answer)",
                 [*echo, str(workdir / "echo-community.bin")],
                 env("community", 2), [("echo", echo_request, operator_md, None)]),
                ("community", ["-m", "bench.server", "community"], env("community", 2),
                 [("RouteMember", route, operator_md, community_pb2_grpc.CommunityServiceStub),
                  ("CheckIn", check_in, operator_md,
                   community_pb2_grpc.CommunityServiceStub)]),
            ],
        }
        chosen = [plan for kind in SERVERS_IN_ORDER if kind in servers for plan in plans[kind]]
        for i, (label, args, server_env, methods) in enumerate(chosen):
            if patch and label in SERVERS:
                args = [*args, "--patch", patch]
            server = Counted(workdir / f"server-{i}", server_env, args)
            try:
                channel = grpc.aio.insecure_channel(
                    f"127.0.0.1:{await server.port()}", options=CHANNEL_OPTIONS)
                if label == "member":
                    await register(channel)  # not counted
                for method, make, md, stub in methods:
                    if stub is None:
                        rpc = channel.unary_unary(
                            ECHO_METHOD, request_serializer=lambda m: m.SerializeToString(),
                            response_deserializer=mpb.Member.FromString, _registered_method=True)
                    else:
                        rpc = getattr(stub(channel), method)

                    def call(rpc=rpc, make=make, md=md) -> Any:
                        return rpc(make(), metadata=md, timeout=120)

                    per_call = await server.count(call, calls)
                    rows.append({"server": label, "method": method,
                                 "instructions_per_call": round(per_call)})
                    say(f"  {label:<38} {method:<16} {per_call:>12,.0f} instructions a call")
                await channel.close()
            finally:
                server.stop()
    finally:
        valkey.stop()
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Each method against the echo measured before it (same answer size)."""
    out, echo = [], None
    for row in rows:
        if row["method"] == "echo":
            echo = row["instructions_per_call"]
            continue
        out.append({**row, "echo_instructions_per_call": echo,
                    "ratio": round(echo / row["instructions_per_call"], 3) if echo else None})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="counted calls a method")
    parser.add_argument("--servers", default=",".join(SERVERS_IN_ORDER),
                        help="which services (with their echo), comma-separated")
    parser.add_argument("--patch", default="", help="a Python file each service runs "
                        "first (a what-if; see bench.server --patch)")
    parser.add_argument("--keep", default="", help="a directory to copy the callgrind "
                        "dumps to (for callgrind_annotate)")
    args = parser.parse_args(argv)
    servers = frozenset(s.strip() for s in args.servers.split(",") if s.strip())
    if not servers or not servers <= SERVERS:
        parser.error(f"--servers: some of {', '.join(SERVERS_IN_ORDER)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.callgrind: valgrind is not installed (apt-get install valgrind)")
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pond-callgrind-") as tmp:
        rows = asyncio.run(_measure(Path(tmp), args.calls, print, servers,
                                    str(Path(args.patch).resolve()) if args.patch else ""))
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for dump in Path(tmp).glob("server-*/callgrind.out.*"):
                shutil.copy(dump, keep / f"{dump.parent.name}-{dump.name}")
    table = ratios(rows)
    print(f"\n{'method':<18}{'instructions a call':>22}{'echo':>12}{'echo / method':>16}")
    for row in table:
        print(f"{row['method']:<18}{row['instructions_per_call']:>22,}"
              f"{row['echo_instructions_per_call']:>12,}{row['ratio']:>16.1%}")
    if servers != SERVERS or args.patch:
        print(f"\n{time.perf_counter() - started:.0f} s (a partial or patched run: not written)")
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "calls": args.calls,
        "rows": rows, "ratios": table, "seconds": round(time.perf_counter() - started),
    }, indent=2) + "\n")
    print(f"\n{time.perf_counter() - started:.0f} s; written: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
