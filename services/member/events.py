"""What the member service publishes, on the stream "pond.events.member":
MemberRegistered, MemberUpdated, MembersMerged, OrderPaid, OrderRefunded, TierChanged,
PointsChanged and PointsExpiring (pond.events.v1). It consumes nothing yet.

Events are serialized here and written to the outbox in the same commit as the
state they describe; the runtime's OutboxRelay publishes them."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import message
from pond.events.v1 import member_events_pb2 as ev
from pond.member.v1 import member_pb2

from services.member.domain.members import Member
from services.member.domain.orders import Order, Refund
from services.member.domain.points import Lot, PointsEntry
from services.runtime.clock import timestamp_pb
from services.runtime.eventbus import make_event, stream_for

PRODUCER = "member"
STREAM = stream_for(PRODUCER)


def _pack(subject: str, payload: message.Message, now: datetime, request_id: str) -> bytes:
    return make_event(PRODUCER, subject, payload, now, request_id).SerializeToString()


class EventWriter:
    """Collects the serialized events of one unit of work."""

    def __init__(self, now: datetime, request_id: str = "") -> None:
        self.now = now
        self.request_id = request_id
        self.events: list[bytes] = []

    def add(self, subject: str, payload: message.Message) -> None:
        self.events.append(_pack(subject, payload, self.now, self.request_id))

    def registered(self, m: Member) -> None:
        self.add(
            m.id,
            ev.MemberRegistered(
                member_id=m.id,
                channel=m.channel,
                referrer_id=m.referrer_id,
                store_id=m.store_id,
                guide_id=m.guide_id,
            ),
        )

    def merged(self, surviving_id: str, merged_id: str, cause: str, reason: str = "") -> None:
        # About the survivor: it is what consumers keep afterwards.
        self.add(
            surviving_id,
            ev.MembersMerged(
                surviving_id=surviving_id, merged_id=merged_id, cause=cause, reason=reason
            ),
        )

    def updated(self, m: Member, changed: list[str]) -> None:
        if changed:
            self.add(
                m.id,
                ev.MemberUpdated(
                    member_id=m.id, changed_fields=sorted(set(changed)), kind=m.kind.value
                ),
            )

    def points(self, entry: PointsEntry) -> None:
        self.add(
            entry.member_id,
            ev.PointsChanged(
                member_id=entry.member_id,
                kind=entry.kind.value,
                delta=entry.delta,
                balance=entry.balance_after,
                entry_id=entry.id,
            ),
        )

    def tier(self, member_id: str, from_level: int, to_level: int, reason: str) -> None:
        self.add(
            member_id,
            ev.TierChanged(
                member_id=member_id, from_level=from_level, to_level=to_level, reason=reason
            ),
        )

    def order_paid(self, o: Order, paid_order_count: int) -> None:
        payload = ev.OrderPaid(
            member_id=o.member_id,
            order_id=o.id,
            channel=o.channel,
            store_id=o.store_id,
            guide_id=o.guide_id,
            amount_fen=o.amount_fen,
            points_earned=o.points_earned,
            growth_earned=o.growth_earned,
            paid_order_count=paid_order_count,
            items=[
                member_pb2.OrderItem(
                    sku=i.sku,
                    category=i.category,
                    quantity=i.quantity,
                    unit_price_fen=i.unit_price_fen,
                )
                for i in o.items
            ],
        )
        payload.paid_at.CopyFrom(timestamp_pb(o.paid_at))
        self.add(o.member_id, payload)

    def order_refunded(self, o: Order, refund: Refund, points_reversed: int) -> None:
        payload = ev.OrderRefunded(
            member_id=o.member_id,
            order_id=o.id,
            refund_id=refund.refund_id,
            refund_fen=refund.fen,
            refunded_total_fen=o.refunded_fen,
            fully_refunded=o.refunded_fen >= o.amount_fen,
            points_reversed=points_reversed,
            growth_reversed=refund.growth,
        )
        payload.paid_at.CopyFrom(timestamp_pb(o.paid_at))
        self.add(o.member_id, payload)

    def expiring(self, lot: Lot) -> None:
        payload = ev.PointsExpiring(member_id=lot.member_id, points=lot.remaining)
        payload.expires_at.CopyFrom(timestamp_pb(lot.expires_at))
        self.add(lot.member_id, payload)
