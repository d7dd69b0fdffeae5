"""The gateway benchmark's load generator: its own process (`python -m bench.http_load`),
on uvloop, driven by the runner through JSON lines on stdin; it answers on stdout.

HTTP/1.1 keep-alive over plain asyncio protocols: each connection sends its next
pre-encoded request from `data_received` the moment the previous answer is complete
(no coroutine per request, no HTTP library), so that the client costs a few µs per
request and the server under test is the bottleneck; the runner checks that by
measuring this client against a server that does no work (bench.http_servers raw).

Commands (one JSON object a line):
  {"op": "throughput", "port", "path", "tokens", "concurrency", "warmup", "duration"}
      closed loop on `concurrency` connections; prints {"event": "window"} when the
      timed window starts and again when it ends (the runner reads the servers' CPU
      then), then the result.
  {"op": "latency", "port", "path", "tokens", "count"}  one connection, one request
      at a time; the result holds every latency in µs.
  {"op": "grpc_latency", "target", "token", "member_ids", "count"}  GetMember over
      gRPC, one call at a time, as the gateway calls it (its role, the member id).
  {"op": "quit"}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import uvloop

TIMEOUT_SECONDS = 10.0


def request_bytes(port: int, path: str, token: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n").encode()


class Run:
    """What one run's connections report to."""

    def __init__(self, record_latency: bool = False) -> None:
        self.running = True
        self.ok = self.errors = 0
        self.first_error = ""
        self.latencies_us: list[float] | None = [] if record_latency else None
        self.closed = 0

    def done(self, status: int, head: bytes, seconds: float) -> None:
        if status == 200:
            self.ok += 1
        else:
            self.errors += 1
            if not self.first_error:
                self.first_error = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if self.latencies_us is not None:
            self.latencies_us.append(seconds * 1e6)


class Connection(asyncio.Protocol):
    def __init__(self, run: Run, requests: list[bytes], limit: int | None = None) -> None:
        self.run, self.requests, self.limit = run, requests, limit
        self.sent = 0
        self.buffer = b""
        self.need = -1
        self.status = 0
        self.head = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.finished = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end]
                at = head.lower().find(b"content-length:")
                if at < 0:
                    raise RuntimeError(f"no content-length in {head[:200]!r}")
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15:line_end if line_end >= 0 else len(head)])
                self.status, self.head = int(head[9:12]), head
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            self.buffer = self.buffer[self.need:]
            self.need = -1
            self.run.done(self.status, self.head, time.perf_counter() - self.sent_at)
            if self.run.running and (self.limit is None or self.sent < self.limit):
                self._send()
            else:
                assert self.transport is not None
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.closed += 1
        if not self.finished.done():
            self.finished.set_result(None)


async def _connect(run: Run, port: int, requests: list[bytes],
                   limit: int | None = None) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: Connection(run, requests, limit), "127.0.0.1", port)
    return protocol


def _say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def throughput(port: int, path: str, tokens: list[str], concurrency: int, warmup: float,
                     duration: float) -> dict[str, Any]:
    run = Run()
    requests = [request_bytes(port, path, t) for t in tokens]
    # Each connection starts at another token, so members are spread over connections.
    connections = await asyncio.gather(*(
        _connect(run, port, requests[i % len(requests):] + requests[:i % len(requests)])
        for i in range(concurrency)))
    await asyncio.sleep(warmup)
    ok0, err0 = run.ok, run.errors
    t0, c0 = time.perf_counter(), time.process_time()
    _say(event="window")
    await asyncio.sleep(duration)
    ok1, err1 = run.ok, run.errors
    t1, c1 = time.perf_counter(), time.process_time()
    _say(event="window")
    run.running = False
    await asyncio.wait_for(asyncio.gather(*(c.finished for c in connections)), TIMEOUT_SECONDS)
    return {"requests": ok1 - ok0, "errors": err1 - err0, "seconds": t1 - t0,
            "client_cpu": c1 - c0, "first_error": run.first_error}


async def latency(port: int, path: str, tokens: list[str], count: int) -> dict[str, Any]:
    run = Run(record_latency=True)
    connection = await _connect(run, port, [request_bytes(port, path, t) for t in tokens], count)
    await asyncio.wait_for(connection.finished, TIMEOUT_SECONDS + count)
    return {"latencies_us": run.latencies_us, "errors": run.errors,
            "first_error": run.first_error}


async def grpc_latency(target: str, token: str, member_ids: list[str],
                       count: int) -> dict[str, Any]:
    import grpc
    from pond.member.v1 import member_pb2, member_pb2_grpc

    from services.runtime.clients import call_metadata

    latencies = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = member_pb2_grpc.MemberServiceStub(channel)
        calls = [(member_pb2.GetMemberRequest(member_id=m),
                  call_metadata(token, request_id=f"bench-{i}", member_id=m))
                 for i, m in enumerate(member_ids)]
        for i in range(count):
            request, metadata = calls[i % len(calls)]
            start = time.perf_counter()
            await stub.GetMember(request, metadata=metadata, timeout=TIMEOUT_SECONDS)
            latencies.append((time.perf_counter() - start) * 1e6)
    return {"latencies_us": latencies, "errors": 0, "first_error": ""}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            return
        try:
            result = await {"throughput": throughput, "latency": latency,
                            "grpc_latency": grpc_latency}[op](**command)
        except Exception as exc:  # reported to the runner, which fails the bench
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        _say(event="result", **result)


def main() -> int:
    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
