"""Service-to-service gRPC clients, one way for every service:

    members = ctx.client("member", settings.member_target, member_pb2_grpc.MemberServiceStub,
                         MEMBER_SERVICE, idempotent={"GetMember", "ListMembers"})
    reply = await members.call(members.stub.GetMember, GetMemberRequest(member_id=...))

- One channel per target, shared by every client of it and closed by the host.
- The caller's own token: a service token (role "service", subject: the calling
  service) minted from the service's auth settings and minted again when a fifth of
  its life is left, so a long-running service never sends an expired one.
- The request id of the call (or event, timer or job) being handled goes on in
  `x-request-id`, so one id follows the work across services.
- The deadline: the call's own timeout (default 5 s), never past what is left of the
  deadline of the call being served (a gRPC call's, or the one an HTTP front such as
  the gateway sets with `request_deadline`), so a caller that gave up is not worked for.
- Retries by gRPC itself, from the channel's service config: a retryPolicy (up to 4
  attempts on UNAVAILABLE, backoff 50 ms doubling up to 1 s, throttled) for the
  methods the client declares idempotent, and none for the others, which a retry
  could apply twice. Value-moving methods are idempotent by their idempotency key.
- A call that fails raises the application error it stands for (errors.py:
  NotFound, FailedPrecondition...), so the caller needs no grpc.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from services.runtime.auth import MEMBER_ID_METADATA, AuthConfig, Role, mint_token
from services.runtime.interceptors import REQUEST_ID_METADATA, rpc_context_var
from services.runtime.logs import current_request_id
from services.runtime.status import from_rpc_error

DEFAULT_DEADLINE_SECONDS = 5.0
MAX_RECEIVE_BYTES = 16 << 20
Metadata = tuple[tuple[str, str], ...]
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def call_metadata(token: str, *, request_id: str = "", member_id: str = "") -> Metadata:
    md = [("authorization", f"Bearer {token}")]
    if request_id:
        md.append((REQUEST_ID_METADATA, request_id))
    if member_id:
        md.append((MEMBER_ID_METADATA, member_id))
    return tuple(md)


def service_config(service: ServiceDescriptor, idempotent: Iterable[str]) -> str:
    """The channel's service config: retries for the idempotent methods only."""
    names = sorted(set(idempotent))
    unknown = set(names) - {m.name for m in service.methods}
    if unknown:
        raise ValueError(f"{service.full_name} has no method {sorted(unknown)}")
    config: dict[str, Any] = {"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
    if names:
        config["methodConfig"] = [{
            "name": [{"service": service.full_name, "method": n} for n in names],
            "retryPolicy": RETRY_POLICY,
        }]
    return json.dumps(config, sort_keys=True)


class ServiceToken:
    """The calling service's own token (see the module docstring). `mint(subject,
    ttl_seconds)` makes one (default: a "service" token signed with `secret`); `now`
    is injectable for tests."""

    def __init__(
        self,
        secret: str | AuthConfig,
        subject: str,
        *,
        ttl_seconds: float = 3600.0,
        now: Callable[[], float] = time.time,
        mint: Callable[[str, float], str] | None = None,
    ) -> None:
        if not secret and mint is None:
            raise ValueError("a service token needs the service's auth secret")
        self.subject, self.ttl = subject, ttl_seconds
        self._mint = mint or (lambda sub, ttl: mint_token(secret, sub, Role.SERVICE, ttl))
        self._now = now
        self._token = ""
        self._renew_at = 0.0

    def get(self) -> str:
        now = self._now()
        if now >= self._renew_at:
            self._token = self._mint(self.subject, self.ttl)
            self._renew_at = now + 0.8 * self.ttl
        return self._token


class Channels:
    """One channel per target (a host's; closed when it stops)."""

    def __init__(self) -> None:
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}

    def get(self, target: str, config: str) -> grpc.aio.Channel:
        known = self._channels.get(target)
        if known is not None:
            if known[0] != config:
                raise ValueError(f"{target}: one service config per target")
            return known[1]
        channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", config),
        ])
        self._channels[target] = (config, channel)
        return channel

    async def close(self) -> None:
        for _config, channel in self._channels.values():
            await channel.close()
        self._channels.clear()


# The deadline (time.monotonic()) of the request being served when it is no gRPC
# call: the gateway sets it per HTTP request.
request_deadline_var: ContextVar[float | None] = ContextVar("pond_request_deadline",
                                                            default=None)


def request_deadline(seconds: float) -> None:
    """Every client call made for the request being served (this context) ends within
    `seconds` from now."""
    request_deadline_var.set(time.monotonic() + seconds)


def remaining_seconds() -> float | None:
    """What is left of the deadline of the call being served, if it has one."""
    context = rpc_context_var.get()
    if context is None:
        deadline = request_deadline_var.get()
        return None if deadline is None else deadline - time.monotonic()
    return context.time_remaining()


class Client(Generic[S]):
    def __init__(
        self,
        stub: S,
        token: ServiceToken,
        *,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    ) -> None:
        self.stub, self.token, self.deadline_seconds = stub, token, deadline_seconds

    def metadata(self, member_id: str = "") -> Metadata:
        return call_metadata(self.token.get(), request_id=current_request_id(),
                             member_id=member_id)

    def timeout(self, wanted: float | None = None) -> float:
        timeout = self.deadline_seconds if wanted is None else wanted
        left = remaining_seconds()
        return timeout if left is None else max(0.0, min(timeout, left))

    async def call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Any,
        *,
        timeout: float | None = None,
        member_id: str = "",
    ) -> Resp:
        """One unary call on `self.stub` (e.g. `client.call(client.stub.GetMember, req)`)."""
        try:
            return await method(request, metadata=self.metadata(member_id),
                                timeout=self.timeout(timeout))
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err

    async def stream(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """The messages of one server-streaming call on `self.stub` (the whole
        stream within `timeout`), errors raised as the application errors they are."""
        try:
            async for message in method(request, metadata=self.metadata(),
                                        timeout=self.timeout(timeout)):
                yield message
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err


def make_client(
    channels: Channels,
    target: str,
    stub_class: Callable[[grpc.aio.Channel], S],
    service: ServiceDescriptor,
    token: ServiceToken,
    *,
    idempotent: Iterable[str] = (),
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
) -> Client[S]:
    channel = channels.get(target, service_config(service, idempotent))
    return Client(stub_class(channel), token, deadline_seconds=deadline_seconds)
