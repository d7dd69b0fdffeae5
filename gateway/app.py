"""`create_app(settings)`: the gateway's FastAPI application.

Route groups are modules in gateway/routes/, registered from the one list in
gateway/routes/__init__.py (ROUTE_GROUPS): a later component adds its routes with
one line there. Every route answers errors in the one problem+json shape
(errors.py) and documents them in the OpenAPI document (/openapi.json, /docs)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gateway.errors import install_error_handlers
from gateway.middleware import RequestContext
from gateway.openapi import accurate_openapi
from gateway.routes import ROUTE_GROUPS
from gateway.settings import GatewaySettings
from gateway.state import Gateway, open_gateway

API_VERSION = "1.0.0"


def create_app(settings: GatewaySettings, *, gateway: Gateway | None = None) -> FastAPI:
    """The application; it opens its Gateway (clients, Redis) at start-up unless one
    is given (tests, benchmarks), which the caller then closes."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gateway is not None:
            app.state.gateway = gateway
            yield
            return
        async with open_gateway(settings) as opened:
            app.state.gateway = opened
            yield

    app = FastAPI(
        title="Pond gateway",
        version=API_VERSION,
        summary="The mini-program's API: sign-in with WeChat, the member's own profile, "
                "points, stored value, orders, the brand's tier programme, and the "
                "member's customer groups, live codes, check-in and chain orders.",
        lifespan=lifespan,
        # operationId = the route function's name (get_me, bind_phone): what client
        # generators name their calls; keep them unique across route groups.
        generate_unique_id_function=lambda route: route.name,
        # FastAPI's own OpenTelemetry hooks off: the gateway has its metrics and log
        # line per request (middleware.py), and the hooks asked OpenTelemetry for its
        # providers on every request (about 3% of /v1/me's CPU in `make bench`).
        telemetry={"tracing": False, "metrics": False, "logs": False,
                   "operation_spans": False},
    )
    install_error_handlers(app)
    for group in ROUTE_GROUPS:
        app.include_router(group)
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"], max_age=600,
        )
    # Outermost: the request id and deadline hold for CORS and error answers too.
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes,
                       deadline_seconds=settings.gateway_deadline_seconds)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = accurate_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
