"""A running service as tests, benchmarks and the dev stack hold it: its host, the
port it serves on, its gRPC server and what its builder kept (`Service.handle`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.runtime.host import ServiceHost
from services.runtime.server import PondServer


@dataclass
class HostedService:
    host: ServiceHost[Any]

    @property
    def port(self) -> int:
        return self.host.port

    @property
    def server(self) -> PondServer:
        assert self.host.server is not None
        return self.host.server

    @property
    def handle(self) -> Any:
        assert self.host.service is not None
        return self.host.service.handle

    async def stop(self, grace: float = 5.0) -> None:
        await self.host.stop(grace)
