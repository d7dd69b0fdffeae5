"""The MemberService servicer: checks input, turns protos into use-case calls and
results back into protos. No rules live here (domain/), no I/O (service layer).
Who may call what: access.py (AUTH_RULES stays importable from here)."""

from __future__ import annotations

from functools import partial

from pond.member.v1 import member_pb2 as pb
from pond.member.v1 import member_pb2_grpc

from services.member import convert
from services.member import validation as val
from services.member.access import AUTH_RULES as AUTH_RULES  # re-exported
from services.member.access import GATEWAY_UPDATABLE, identity_trust
from services.member.app import MemberApp
from services.member.domain import members as dm
from services.member.domain.orders import OrderItem
from services.member.ledgers_api import LedgersApi
from services.member.service import DOMAIN, MemberFilter  # (its use case's type)
from services.runtime import paging
from services.runtime.auth import Role, current_caller, ensure_acts_for
from services.runtime.errors import Violations
from services.runtime.fields import timestamp
from services.runtime.idempotency import Idempotent

# The idempotent methods: each keeps its first response for replays (see
# services.runtime.idempotency); the key field is idempotency_key unless named.
SET_PAID = Idempotent("SetPaidMembership", pb.Member)
RECORD_ORDER = Idempotent(
    "RecordOrder", pb.RecordOrderResponse, key_field="order_id", replayed_field="replayed"
)
REFUND_ORDER = Idempotent(
    "RefundOrder", pb.RefundOrderResponse, key_field="refund_id", scope_fields=("order_id",)
)
ITEM_CATEGORY_CHARS = 64
ITEM_QUANTITY_MAX = 1_000_000


def _item_fits(item: pb.OrderItem) -> bool:
    """The order item checks of RecordOrder in one expression (the same bounds as
    the per-field checks there, which name what is wrong)."""
    return (0 < len(item.sku) <= val.MAX_ID and len(item.category) <= ITEM_CATEGORY_CHARS
            and 0 < item.quantity <= ITEM_QUANTITY_MAX
            and 0 <= item.unit_price_fen <= val.MAX_FEN)


class MemberServicer(LedgersApi, member_pb2_grpc.MemberServiceServicer):
    def __init__(self, app: MemberApp) -> None:
        self.app = app
        self._shown_members = convert.ShownMembers(app.reveal)

    async def _member_pb(self, m) -> pb.Member:
        caller = current_caller.get()
        program = await self.app.tier_program()
        return convert.member_pb(m, program, self.app.reveal, caller is None or caller.sees_phone)

    async def _read_member_pb(self, m) -> pb.Member:
        """A member read for reading only (app.get, app.find): answered from the
        conversions kept while it is unchanged (convert.ShownMembers)."""
        caller = current_caller.get()
        program = await self.app.tier_program()
        return self._shown_members.get(m, program, caller is None or caller.sees_phone)

    async def _kept_member_pb(self, m) -> pb.Member:
        """A member in a response kept for replays; _shown turns it into what the
        caller may see."""
        return convert.kept_member_pb(m, await self.app.tier_program())

    def _shown(self, member: pb.Member) -> pb.Member:
        caller = current_caller.get()
        convert.show_phones(member, self.app.cipher.decrypt, caller is None or caller.sees_phone)
        return member

    # -- members --
    async def RegisterMember(
        self, request: pb.RegisterMemberRequest, context
    ) -> pb.RegisterMemberResponse:
        v = Violations(DOMAIN)
        if not request.identities:
            v.add("identities", "at least one identity is required")
        elif len(request.identities) > val.MAX_IDENTITIES:
            v.add("identities", f"at most {val.MAX_IDENTITIES}")
        identities = [
            val.identity(v, f"identities[{i}]", ident) for i, ident in enumerate(request.identities)
        ]
        profile = val.profile_fields(v, request.profile, "profile", set(), self.app.now())
        for path in ("store_id", "guide_id", "referrer_id"):
            val.text(v, path, getattr(request, path))
        val.enum(v, "acquisition_channel", request.acquisition_channel, dm.VALID_CHANNELS)
        consents = val.consents(v, request.consents, self.app.now())
        v.raise_if_any()
        fields = dict(
            profile,
            store_id=request.store_id,
            guide_id=request.guide_id,
            channel=request.acquisition_channel,
            referrer_id=request.referrer_id,
            consents=consents,
        )
        m, created = await self.app.register(
            [i for i in identities if i],
            fields,
            val.request_id(),
            identity_trust(current_caller.get()),
        )
        return pb.RegisterMemberResponse(member=await self._member_pb(m), created=created)

    async def GetMember(self, request: pb.GetMemberRequest, context) -> pb.Member:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        v.raise_if_any()
        ensure_acts_for(request.member_id)
        return await self._read_member_pb(await self.app.get(request.member_id))

    async def FindMember(self, request: pb.FindMemberRequest, context) -> pb.Member:
        v = Violations(DOMAIN)
        ident = val.identity(v, "identity", request.identity)
        v.raise_if_any()
        assert ident is not None  # a violation otherwise, and raise_if_any ended the call
        return await self._read_member_pb(await self.app.find(ident))

    async def ListMembers(self, request: pb.ListMembersRequest, context) -> pb.ListMembersResponse:
        v = Violations(DOMAIN)
        page = paging.begin(request, v, {"a": str})
        val.enum(v, "kind", request.kind, [k.value for k in dm.MemberKind])
        val.enum(v, "acquisition_channel", request.acquisition_channel, dm.VALID_CHANNELS)
        if not 0 <= request.tier_level <= 3:
            v.add("tier_level", "must be 0..3 (or unset for any tier)")
        val.text(v, "store_id", request.store_id)
        val.text(v, "guide_id", request.guide_id)
        v.raise_if_any()
        flt = MemberFilter(
            store_id=request.store_id,
            guide_id=request.guide_id,
            tier_level=request.tier_level if request.HasField("tier_level") else -1,
            kind=request.kind,
            channel=request.acquisition_channel,
        )
        found = await self.app.list(flt, page.get("a", ""), page.fetch)
        members, token = page.finish(found, lambda m: {"a": m.id})
        return pb.ListMembersResponse(
            members=[await self._member_pb(m) for m in members], next_page_token=token
        )

    async def UpdateMember(self, request: pb.UpdateMemberRequest, context) -> pb.Member:
        v = Violations(DOMAIN)
        member_id = request.member.id
        val.text(v, "member.id", member_id, required=True)
        paths = set(request.update_mask.paths)
        if not paths:
            v.add("update_mask", "name the fields to update")
        for path in paths - dm.UPDATABLE_PATHS:
            v.add("update_mask", f"{path!r} cannot be updated")
        caller = current_caller.get()
        if caller is not None and caller.role is Role.GATEWAY:
            for path in paths - GATEWAY_UPDATABLE:
                v.add("update_mask", f"{path!r} cannot be changed by the member")
        v.raise_if_any()
        src = request.member
        values = (
            val.profile_fields(v, src.profile, "member.profile", paths, self.app.now())
            if paths & dm.PROFILE_PATHS
            else {}
        )
        for path in ("store_id", "guide_id", "referrer_id"):
            if path in paths:
                val.text(v, f"member.{path}", getattr(src, path))
                values[path] = getattr(src, path)
        if "co_branded" in paths:
            values["co_branded"] = src.co_branded
        if "consents" in paths:
            values["consents"] = val.consents(v, src.consents, self.app.now())
        v.raise_if_any()
        ensure_acts_for(member_id)
        if values.get("referrer_id"):
            await self.app.get(values["referrer_id"])
        # A customer sets their birthday once; operators may correct it.
        once = caller is not None and caller.role is Role.GATEWAY
        return await self._member_pb(
            await self.app.update(member_id, values, val.request_id(), birthday_once=once)
        )

    async def AddMemberIdentity(self, request: pb.AddMemberIdentityRequest, context) -> pb.Member:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        ident = val.identity(v, "identity", request.identity)
        v.raise_if_any()
        assert ident is not None  # a violation otherwise, and raise_if_any ended the call
        ensure_acts_for(request.member_id)
        trust = identity_trust(current_caller.get())
        return await self._member_pb(
            await self.app.add_identity(request.member_id, ident, val.request_id(), trust)
        )

    async def SetPaidMembership(self, request: pb.SetPaidMembershipRequest, context) -> pb.Member:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        until = timestamp(v, request, "paid_until", required=True)
        SET_PAID.check(v, request)
        v.raise_if_any()
        assert until is not None  # required: raise_if_any ended the call otherwise
        call = SET_PAID.call(request, self._kept_member_pb)
        return self._shown(
            await self.app.set_paid_membership(request.member_id, until, call, val.request_id())
        )

    async def BindVerifiedPhone(
        self, request: pb.BindVerifiedPhoneRequest, context
    ) -> pb.BindVerifiedPhoneResponse:
        v = Violations(DOMAIN)
        val.text(v, "member_id", request.member_id, required=True)
        phone = val.identity(
            v, "phone", pb.Identity(kind=pb.IDENTITY_KIND_PHONE, value=request.phone)
        )
        v.raise_if_any()
        assert phone is not None  # a violation otherwise, and raise_if_any ended the call
        ensure_acts_for(request.member_id)
        m, merged_id = await self.app.bind_verified_phone(
            request.member_id, phone, val.request_id()
        )
        return pb.BindVerifiedPhoneResponse(
            member=await self._member_pb(m), merged=bool(merged_id), merged_id=merged_id
        )

    async def MergeMembers(
        self, request: pb.MergeMembersRequest, context
    ) -> pb.MergeMembersResponse:
        v = Violations(DOMAIN)
        val.text(v, "surviving_id", request.surviving_id, required=True)
        val.text(v, "merged_id", request.merged_id, required=True)
        val.text(v, "reason", request.reason, limit=val.MAX_TEXT)
        if request.surviving_id and request.surviving_id == request.merged_id:
            v.add("merged_id", "a member cannot be merged into itself")
        v.raise_if_any()
        m = await self.app.merge_members(
            request.surviving_id, request.merged_id, request.reason, val.request_id()
        )
        return pb.MergeMembersResponse(member=await self._member_pb(m))

    # -- tiers --
    async def GetTierProgram(self, request, context) -> pb.TierProgram:
        return convert.program_pb(await self.app.get_program())

    async def UpdateTierProgram(
        self, request: pb.UpdateTierProgramRequest, context
    ) -> pb.TierProgram:
        return convert.program_pb(
            await self.app.update_program(convert.program_from_pb(request.program))
        )

    async def EvaluateTiers(self, request, context) -> pb.EvaluateTiersResponse:
        evaluated, downgraded = await self.app.evaluate_tiers()
        return pb.EvaluateTiersResponse(members_evaluated=evaluated, members_downgraded=downgraded)

    async def ListTierChanges(
        self, request: pb.ListTierChangesRequest, context
    ) -> pb.ListTierChangesResponse:
        changes, token = await self._member_page(
            request,
            "s",
            lambda mid, after, n: self.app.list_tier_changes(mid, after or 0, n),
            lambda item: item[0],
            cursor_type=int,
        )
        return pb.ListTierChangesResponse(
            changes=[convert.tier_change_pb(c) for _s, c in changes], next_page_token=token
        )

    # -- orders --
    async def RecordOrder(self, request: pb.RecordOrderRequest, context) -> pb.RecordOrderResponse:
        v = Violations(DOMAIN)
        val.text(v, "order_id", request.order_id, required=True)
        val.text(v, "member_id", request.member_id, required=True)
        val.enum(v, "channel", request.channel, dm.VALID_CHANNELS, required=True)
        val.text(v, "store_id", request.store_id)
        val.text(v, "guide_id", request.guide_id)
        val.positive(v, "amount_fen", request.amount_fen, val.MAX_FEN)
        # One slice of the repeated field (iterating it ends in an IndexError raised and
        # caught inside protobuf), used for the checks and the items below.
        given = request.items[:]
        if len(given) > val.MAX_ITEMS:
            v.add("items", f"at most {val.MAX_ITEMS} items")
        for i, item in enumerate(given[: val.MAX_ITEMS]):
            if not _item_fits(item):  # the paths are spelled out only for a bad item
                val.text(v, f"items[{i}].sku", item.sku, required=True)
                val.text(v, f"items[{i}].category", item.category, limit=ITEM_CATEGORY_CHARS)
                val.positive(v, f"items[{i}].quantity", item.quantity, ITEM_QUANTITY_MAX)
                if not 0 <= item.unit_price_fen <= val.MAX_FEN:
                    v.add(f"items[{i}].unit_price_fen", f"must be between 0 and {val.MAX_FEN}")
        paid_at = timestamp(v, request, "paid_time")
        if paid_at is not None and paid_at > self.app.now() + val.FUTURE_SLACK:
            v.add("paid_time", "is in the future")
        v.raise_if_any()
        items = tuple(OrderItem(i.sku, i.category, i.quantity, i.unit_price_fen) for i in given)
        program = await self.app.tier_program()
        response = await self.app.record_order(
            order_id=request.order_id,
            member_id=request.member_id,
            channel=request.channel,
            store_id=request.store_id,
            guide_id=request.guide_id,
            items=items,
            amount_fen=request.amount_fen,
            paid_at=paid_at,
            call=RECORD_ORDER.call(request, partial(convert.recorded_order_pb, program=program)),
            request_id=val.request_id(),
        )
        self._shown(response.member)
        return response

    async def RefundOrder(self, request: pb.RefundOrderRequest, context) -> pb.RefundOrderResponse:
        v = Violations(DOMAIN)
        val.text(v, "order_id", request.order_id, required=True)
        val.text(v, "refund_id", request.refund_id, required=True)
        if not 0 <= request.refund_fen <= val.MAX_FEN:
            v.add("refund_fen", f"must be 0 (everything left) up to {val.MAX_FEN}")
        v.raise_if_any()
        program = await self.app.tier_program()
        response = await self.app.refund_order(
            request.order_id,
            request.refund_id,
            request.refund_fen,
            REFUND_ORDER.call(request, partial(convert.refunded_order_pb, program=program)),
            val.request_id(),
        )
        self._shown(response.member)
        return response

    async def GetOrder(self, request: pb.GetOrderRequest, context) -> pb.Order:
        v = Violations(DOMAIN)
        val.text(v, "order_id", request.order_id, required=True)
        v.raise_if_any()
        order = await self.app.order(request.order_id)
        ensure_acts_for(order.member_id)
        return convert.order_pb(order)

    async def ListOrders(self, request: pb.ListOrdersRequest, context) -> pb.ListOrdersResponse:
        orders, token = await self._member_page_by_id(request, self.app.list_orders)
        return pb.ListOrdersResponse(
            orders=[convert.order_pb(o) for o in orders], next_page_token=token
        )
