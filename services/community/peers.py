"""What the community service asks other services about a member, through the
runtime's service clients (its own service token, the caller's request id and
deadline passed on): the member service's GetMember (tier, purchases, store, city)
and tagging's GetMemberProfile (tags) and CheckMembership (segments).

One `MemberLookup` serves one call: each question is asked at most once, and only
when a rule needs it (a routing call whose rules need nothing asks nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pond.member.v1 import member_pb2
from pond.tagging.v1 import tagging_pb2

from services.runtime.clients import Client
from services.runtime.errors import NotFound, failed_precondition

DOMAIN = "pond.community"


@dataclass
class Peers:
    """The clients (made by server.py from the configured targets)."""

    members: Client[Any]
    tagging: Client[Any]

    def lookup(self, member_id: str) -> MemberLookup:
        return MemberLookup(self, member_id)


class MemberLookup:
    def __init__(self, peers: Peers, member_id: str) -> None:
        self.peers, self.member_id = peers, member_id
        self._member: Any = None
        self._tags: frozenset[str] | None = None
        self._segments: dict[str, bool] = {}

    async def member(self) -> Any:
        """The member as the member service has it (FAILED_PRECONDITION
        MEMBER_NOT_FOUND when it does not know them)."""
        if self._member is None:
            client = self.peers.members
            try:
                self._member = await client.call(
                    client.stub.GetMember, member_pb2.GetMemberRequest(member_id=self.member_id)
                )
            except NotFound as exc:
                raise failed_precondition(
                    "MEMBER_NOT_FOUND", f"member {self.member_id!r} is not known",
                    domain=DOMAIN, member_id=self.member_id,
                ) from exc
        return self._member

    async def tier_level(self) -> int:
        return int((await self.member()).tier_level)

    async def has_bought(self) -> bool:
        return (await self.member()).paid_order_count > 0

    async def home(self) -> tuple[str, str]:
        """(store id, city) of the member."""
        m = await self.member()
        return m.store_id, m.profile.city

    async def tags(self) -> frozenset[str]:
        if self._tags is None:
            client = self.peers.tagging
            try:
                profile = await client.call(
                    client.stub.GetMemberProfile,
                    tagging_pb2.GetMemberProfileRequest(member_id=self.member_id),
                )
                self._tags = frozenset(t.name for t in profile.tags)
            except NotFound:  # tagging has not seen the member: no tags yet
                self._tags = frozenset()
        return self._tags

    async def segments(self, segment_ids: list[str]) -> dict[str, bool]:
        missing = [s for s in segment_ids if s not in self._segments]
        if missing:
            client = self.peers.tagging
            try:
                reply = await client.call(
                    client.stub.CheckMembership,
                    tagging_pb2.CheckMembershipRequest(member_id=self.member_id,
                                                       segment_ids=missing),
                )
            except NotFound as exc:
                raise failed_precondition(
                    "SEGMENT_NOT_FOUND", f"a segment of {missing} is not known to tagging",
                    domain=DOMAIN,
                ) from exc
            self._segments.update(dict(reply.memberships))
        return {s: self._segments.get(s, False) for s in segment_ids}
