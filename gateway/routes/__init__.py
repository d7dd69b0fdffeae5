"""The gateway's route groups, one module each; a component adds its group here
(e.g. `community.router`) and nowhere else."""

from fastapi import APIRouter

from gateway.routes import auth, community, health, me, orders, phone, points, program

ROUTE_GROUPS: list[APIRouter] = [
    health.router,
    auth.router,
    me.router,
    phone.router,
    points.router,
    orders.router,
    program.router,
    community.router,
]
