"""Building and running a Pond gRPC server: grpc.aio, the service interceptor (applied
to every handler as it is registered, health and reflection included),
standard health (per-service status) and reflection, Prometheus metrics on their
own port, and graceful shutdown (SIGTERM -> NOT_SERVING -> drain -> stop)."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from services.runtime.auth import (
    AuthConfig,
    Authorizer,
    Role,
    TokenVerifier,
    audience_of,
    method_rules,
)
from services.runtime.config import (
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_RECEIVE_BYTES,
    page_key_from,
)
from services.runtime.interceptors import InterceptedServer, ServiceInterceptor

log = structlog.get_logger("pond.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServiceRegistration:
    descriptor: ServiceDescriptor
    add_to_server: Callable[[InterceptedServer], None]
    # Short method name -> roles allowed. Every method must have a rule.
    rules: dict[str, frozenset[Role]]
    # Short method names the gateway may call before it has verified a member
    # (x-pond-member-id); every other gateway call must name one.
    gateway_before_sign_in: frozenset[str] = frozenset()

    def full_rules(self) -> dict[str, frozenset[Role]]:
        missing = {m.name for m in self.descriptor.methods} - set(self.rules)
        if missing:
            raise RuntimeError(f"{self.descriptor.full_name}: no auth rule for {sorted(missing)}")
        return method_rules(self.descriptor.full_name, self.rules)

    def full_before_sign_in(self) -> frozenset[str]:
        names = self.gateway_before_sign_in
        service = self.descriptor.full_name
        unknown = names - {name for name, roles in self.rules.items() if Role.GATEWAY in roles}
        if unknown:
            raise RuntimeError(f"{service}: not open to the gateway: {sorted(unknown)}")
        return frozenset(f"/{service}/{name}" for name in names)


class PondServer:
    def __init__(
        self,
        registration: ServiceRegistration,
        *,
        auth: AuthConfig | None = None,
        secret: str = "",
        page_key: bytes = b"",
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_port: int = 0,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    ) -> None:
        """`auth`: how tokens are checked (settings.auth_config()); or just the auth
        `secret` (one key, its id derived, the default issuer). `page_key` signs page
        tokens (settings.page_key(); default: derived from the signing secret). The
        service's token audience comes from its proto package (`pond.member`)."""
        if auth is None:
            if not secret:
                raise RuntimeError("refusing to start without an auth secret (POND_AUTH_SECRET)")
            auth = AuthConfig.from_secret(secret)
        self.registration = registration
        self.name = registration.descriptor.full_name
        self.audience = audience_of(self.name)
        authorizer = Authorizer(
            TokenVerifier(auth, audience=self.audience),
            registration.full_rules(),
            registration.full_before_sign_in(),
        )
        page_key = page_key or page_key_from("", auth.signing_key.secret)
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", max_receive_bytes),
                ("grpc.max_concurrent_streams", max_concurrent_streams),
                # Count open HTTP/2 streams against that cap, as clients do (they wait
                # for a free one). grpc's default also counts streams of finished calls
                # until Python releases them, and refuses new ones (UNAVAILABLE) at 64
                # calls in flight against a cap of 100.
                ("grpc.http.overload_protection", 0),
            ],
        )
        intercepted = InterceptedServer(self.server, ServiceInterceptor(authorizer, page_key))
        # The service's own methods first: grpc asks the generic handlers in order.
        registration.add_to_server(intercepted)
        self.health = health.aio.HealthServicer()
        # (InterceptedServer stands in for the server: see interceptors.py)
        as_server = cast(grpc.aio.Server, intercepted)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, as_server)
        # (enable_server_reflection would pick the sync servicer for a non-aio server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
            reflection.aio.ReflectionServicer(
                (self.name, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            intercepted,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind {host}:{port}")
        self.metrics_port = metrics_port
        self.host = host
        self._metrics_http: Any = None  # prometheus_client's WSGI server, once started

    async def start(self, *, serving: bool = True) -> int:
        """`serving=False`: health stays NOT_SERVING until the caller says otherwise
        (the host does, once what the service needs is there)."""
        if not serving:
            await self.set_serving(False)
        if self.metrics_port:
            # On the same address as gRPC: a loopback-only stack exposes nothing else.
            self._metrics_http, _thread = start_http_server(self.metrics_port, addr=self.host)
        await self.server.start()
        if serving:
            await self.set_serving(True)
        log.info("serving", service=self.name, port=self.port, metrics_port=self.metrics_port)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        await self.health.set(self.name, status)
        await self.health.set("", status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)
        if self._metrics_http is not None:
            await asyncio.to_thread(self._metrics_http.shutdown)  # waits out its poll
            self._metrics_http.server_close()
            self._metrics_http = None
        log.info("stopped", service=self.name)


# Net allocations of tracked objects between two collections of the young generation
# (Python's default: 700, then every 10th and 100th collection the older ones too).
# Calls allocate many short-lived objects, so at 700 a young collection ran every
# few calls (every ~4 RouteMembers; ~110 at 20,000): 20,000 took ~2.5% off
# RouteMember's instructions and gave +2.9% calls/s (bench.community_ab, three
# repeats), and the collector's share of RecordOrder's CPU went from 2.7% to 1.0%.
# Cyclic garbage then waits up to 20,000 allocations (a few MB) before it is freed.
GC_THRESHOLDS = (20_000, 20, 20)  # young, middle (in young runs), old (in middle runs)


def tune_heap_for_serving() -> None:
    """Called once a service has started. What start-up built (modules, settings,
    the tagging working set) lives as long as the process, so it leaves the cyclic
    garbage collector's generations instead of being walked by every full
    collection while RPCs are served (3 to 4 points of CheckMembership-vs-echo
    throughput in bench.tagging); refcounting still frees any of it that is dropped.
    And the collector runs less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def termination_requested() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT from now on. Taken before a long start-up, it
    keeps a signal that arrives meanwhile (the process then stops in order once it
    has started) instead of leaving it to the default action, which kills at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_for_termination_signal() -> None:
    """Returns on SIGTERM or SIGINT."""
    await termination_requested().wait()
