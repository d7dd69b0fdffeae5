"""The member's orders. Another member's order is answered exactly like an order that
does not exist (404): the gateway never confirms that an id belongs to someone."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pond.member.v1 import member_pb2 as pb

from gateway import convert
from gateway.errors import Problem, problem_responses
from gateway.models import OrdersPage, OrderView
from gateway.routes.me import ReadingMember
from gateway.routes.pages import PAGE_SIZE_DEFAULT, PageSize, PageToken
from services.runtime.errors import NotFound, PermissionDenied

router = APIRouter(prefix="/v1/me", tags=["orders"])


# An OpenAPI link: where an order's id leads (client generators and schemathesis's
# stateful tests follow it).
_ORDER_LINK: dict[int | str, dict[str, Any]] = {200: {"links": {"GetOrder": {
    "operationId": "get_order", "parameters": {"order_id": "$response.body#/orders/0/id"},
    "description": "The first order of the page"}}}}


@router.get("/orders", response_model=OrdersPage, summary="My orders, newest first",
            responses={**problem_responses(400, 401), **_ORDER_LINK})
async def list_orders(request: Request, me: ReadingMember, page_size: PageSize = PAGE_SIZE_DEFAULT,
                      page_token: PageToken = "") -> OrdersPage:
    members = request.app.state.gateway.members
    reply = await members.call(members.stub.ListOrders, pb.ListOrdersRequest(
        member_id=me.member_id, page_size=page_size, page_token=page_token),
        member_id=me.member_id)
    return OrdersPage(orders=[convert.order(o) for o in reply.orders],
                      next_page_token=reply.next_page_token)


@router.get("/orders/{order_id}", response_model=OrderView, summary="One of my orders",
            responses=problem_responses(401, 404))
async def get_order(request: Request, me: ReadingMember,
                    order_id: Annotated[str, Path(min_length=1, max_length=128)]) -> OrderView:
    members = request.app.state.gateway.members
    try:
        order = await members.call(members.stub.GetOrder, pb.GetOrderRequest(order_id=order_id),
                                   member_id=me.member_id)
    except (NotFound, PermissionDenied) as exc:
        raise Problem(404, "ORDER_NOT_FOUND", "no such order") from exc
    if order.member_id != me.member_id:  # the service checks it too; never rely on one wall
        raise Problem(404, "ORDER_NOT_FOUND", "no such order")
    return convert.order(order)
