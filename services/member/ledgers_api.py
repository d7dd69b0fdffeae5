"""The MemberService's points and stored-value methods (part of MemberServicer, see
api.py): checks input, turns protos into use-case calls and results back into
protos; and the paging of a member's history lists that api.py shares."""

from __future__ import annotations

from pond.member.v1 import member_pb2 as pb

from services.member import convert
from services.member import validation as val
from services.member.app import MemberApp
from services.member.service import DOMAIN
from services.runtime import paging
from services.runtime.auth import ensure_acts_for
from services.runtime.errors import Violations, invalid_argument
from services.runtime.idempotency import Idempotent

# The idempotent methods: each keeps its first response for replays (see
# services.runtime.idempotency).
REDEEM = Idempotent("RedeemPoints", pb.PointsEntry)
ADJUST = Idempotent("AdjustPoints", pb.PointsEntry)
TOP_UP = Idempotent("TopUpStoredValue", pb.StoredValueEntry)
PAY = Idempotent("PayWithStoredValue", pb.StoredValueEntry)
REFUND_PAYMENT = Idempotent("RefundStoredValuePayment", pb.StoredValueEntry)


class LedgersApi:
    app: MemberApp

    async def _member_page(
        self, request, key: str, fetch, cursor_of, cursor_type: type = str
    ) -> tuple[list, str]:
        """One page of a member's history list: checks member_id, page size and token,
        fetches one extra item to know whether another page follows."""
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        page = paging.begin(request, v, {key: cursor_type})
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        items = await fetch(request.member_id, page.get(key, None), page.fetch)
        return page.finish(items, lambda item: {key: cursor_of(item)})

    async def _member_page_by_id(self, request, fetch) -> tuple[list, str]:
        """_member_page for the lists ordered by item id (newest first), whose fetch
        takes (member_id, after_id or "", limit)."""
        return await self._member_page(
            request, "b", lambda mid, after, n: fetch(mid, after or "", n), lambda item: item.id
        )

    # -- points --
    async def RedeemPoints(self, request: pb.RedeemPointsRequest, context) -> pb.PointsEntry:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        val.positive(v, "points", request.points, val.MAX_POINTS)
        val.text(v, "reason", request.reason, limit=val.MAX_TEXT)
        REDEEM.check(v, request)
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        return await self.app.redeem_points(
            request.member_id,
            request.points,
            request.reason,
            REDEEM.call(request, convert.points_entry_pb),
            val.request_id(),
        )

    async def AdjustPoints(self, request: pb.AdjustPointsRequest, context) -> pb.PointsEntry:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        if request.delta == 0 or abs(request.delta) > val.MAX_POINTS:
            v.add("delta", f"must be non-zero and at most {val.MAX_POINTS} either way")
        val.text(v, "reason", request.reason, required=True, limit=val.MAX_TEXT)
        ADJUST.check(v, request)
        v.raise_if_any()
        return await self.app.adjust_points(
            request.member_id,
            request.delta,
            request.reason,
            ADJUST.call(request, convert.points_entry_pb),
            val.request_id(),
        )

    async def ListPointsEntries(
        self, request: pb.ListPointsEntriesRequest, context
    ) -> pb.ListPointsEntriesResponse:
        entries, token = await self._member_page_by_id(request, self.app.list_points_entries)
        return pb.ListPointsEntriesResponse(
            entries=[convert.points_entry_pb(e) for e in entries], next_page_token=token
        )

    async def ListExpiringPoints(
        self, request: pb.ListExpiringPointsRequest, context
    ) -> pb.ListExpiringPointsResponse:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id)
        if not 1 <= request.within_days <= 366:
            v.add("within_days", "must be between 1 and 366")
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        found = await self.app.expiring_points(
            request.member_id, request.within_days, page.get("a", ""), page.fetch
        )
        lots, token = page.finish(found, lambda lot: {"a": lot.id})
        return pb.ListExpiringPointsResponse(
            expiring=[convert.expiring_pb(lot) for lot in lots], next_page_token=token
        )

    async def RunPointsExpiry(
        self, request: pb.RunPointsExpiryRequest, context
    ) -> pb.RunPointsExpiryResponse:
        if not 0 <= request.remind_within_days <= 366:
            raise invalid_argument([("remind_within_days", "must be 0..366")], domain=DOMAIN)
        members, points, announced = await self.app.run_points_expiry(
            request.remind_within_days or 30
        )
        return pb.RunPointsExpiryResponse(
            members_expired=members, points_expired=points, lots_announced=announced
        )

    async def GrantBirthdayGifts(
        self, request: pb.GrantBirthdayGiftsRequest, context
    ) -> pb.GrantBirthdayGiftsResponse:
        members, points = await self.app.grant_birthday_gifts()
        return pb.GrantBirthdayGiftsResponse(members_gifted=members, points_granted=points)

    # -- stored value --
    async def TopUpStoredValue(
        self, request: pb.TopUpStoredValueRequest, context
    ) -> pb.StoredValueEntry:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        val.positive(v, "amount_fen", request.amount_fen, val.MAX_FEN)
        if not 0 <= request.bonus_fen <= val.MAX_FEN:
            v.add("bonus_fen", f"must be between 0 and {val.MAX_FEN}")
        val.text(v, "reference", request.reference, limit=val.MAX_TEXT)
        TOP_UP.check(v, request)
        v.raise_if_any()
        return await self.app.top_up(
            request.member_id,
            request.amount_fen,
            request.bonus_fen,
            request.reference,
            TOP_UP.call(request, convert.sv_entry_pb),
            val.request_id(),
        )

    async def PayWithStoredValue(
        self, request: pb.PayWithStoredValueRequest, context
    ) -> pb.StoredValueEntry:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        val.positive(v, "amount_fen", request.amount_fen, val.MAX_FEN)
        val.text(v, "reference", request.reference, required=True, limit=val.MAX_TEXT)
        PAY.check(v, request)
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        return await self.app.pay(
            request.member_id,
            request.amount_fen,
            request.reference,
            PAY.call(request, convert.sv_entry_pb),
            val.request_id(),
        )

    async def RefundStoredValuePayment(
        self, request: pb.RefundStoredValuePaymentRequest, context
    ) -> pb.StoredValueEntry:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        val.text(v, "payment_entry_id", request.payment_entry_id, required=True)
        val.positive(v, "amount_fen", request.amount_fen, val.MAX_FEN)
        REFUND_PAYMENT.check(v, request)
        v.raise_if_any()
        return await self.app.refund_payment(
            request.member_id,
            request.payment_entry_id,
            request.amount_fen,
            REFUND_PAYMENT.call(request, convert.sv_entry_pb),
            val.request_id(),
        )

    async def ListStoredValueEntries(
        self, request: pb.ListStoredValueEntriesRequest, context
    ) -> pb.ListStoredValueEntriesResponse:
        entries, token = await self._member_page_by_id(request, self.app.list_stored_value_entries)
        return pb.ListStoredValueEntriesResponse(
            entries=[convert.sv_entry_pb(e) for e in entries], next_page_token=token
        )
