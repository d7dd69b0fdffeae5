"""/healthz (the process answers: liveness), /readyz (the member service's health,
the community service's when POND_COMMUNITY_TARGET names one, and Redis answer:
readiness), /metrics (Prometheus; keep it off the public ingress).

A gateway without a community service (a member-only deployment) is ready without
it: its community routes answer 503 COMMUNITY_NOT_CONFIGURED whatever the probe says.
With one configured, a community outage makes the gateway unready like a member
outage: every replica shares it, so the probe only tells the ingress what is true."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.models import Health
from gateway.state import Gateway

router = APIRouter(tags=["health"])
PROBE_SECONDS = 2.0


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: the services it needs answer",
            responses={503: {"model": Health, "description": "Not ready"}})
async def readyz(request: Request) -> Response:
    gateway = request.app.state.gateway
    probes = {"member": _serving(gateway.member_health, "pond.member.v1.MemberService"),
              "redis": _redis_answers(gateway)}
    if gateway.community_health is not None:
        probes["community"] = _serving(gateway.community_health,
                                       "pond.community.v1.CommunityService")
    checks = dict(zip(probes, await asyncio.gather(*probes.values()), strict=True))
    ok = all(checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _serving(stub: health_pb2_grpc.HealthStub, service: str) -> bool:
    with contextlib.suppress(Exception):
        # typeshed's HealthStub declares no methods (grpc adds them at run time).
        reply = await stub.Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=service), timeout=PROBE_SECONDS)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    return False


async def _redis_answers(gateway: Gateway) -> bool:
    with contextlib.suppress(Exception):
        return bool(await asyncio.wait_for(gateway.redis.ping(), PROBE_SECONDS))
    return False


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
