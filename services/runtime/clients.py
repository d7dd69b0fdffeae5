"""gRPC clients: one channel per target, reused; a deadline on every call; the
caller's token and request id in metadata; retries only on UNAVAILABLE and only
for calls the caller marks idempotent. A call that fails raises the application
error it stands for (errors.py: NotFound, FailedPrecondition...), so the caller
needs no grpc."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.runtime.auth import MEMBER_ID_METADATA
from services.runtime.interceptors import REQUEST_ID_METADATA
from services.runtime.status import from_rpc_error

DEFAULT_DEADLINE_SECONDS = 5.0
_channels: dict[str, grpc.aio.Channel] = {}
Metadata = tuple[tuple[str, str], ...]


def channel(target: str) -> grpc.aio.Channel:
    """The shared channel for `target`, created on first use."""
    existing = _channels.get(target)
    if existing is None:
        existing = _channels[target] = grpc.aio.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 16 << 20)]
        )
    return existing


async def close_channels() -> None:
    for ch in list(_channels.values()):
        await ch.close()
    _channels.clear()


def call_metadata(token: str, *, request_id: str = "", member_id: str = "") -> Metadata:
    md = [("authorization", f"Bearer {token}")]
    if request_id:
        md.append((REQUEST_ID_METADATA, request_id))
    if member_id:
        md.append((MEMBER_ID_METADATA, member_id))
    return tuple(md)


async def call(
    method: Callable[..., Awaitable[Any]],
    request: Any,
    *,
    metadata: Metadata,
    timeout: float = DEFAULT_DEADLINE_SECONDS,
    idempotent: bool = False,
    attempts: int = 3,
) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return await method(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            retry = idempotent and err.code() == grpc.StatusCode.UNAVAILABLE and attempt < attempts
            if not retry:
                raise from_rpc_error(err) from err
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")
