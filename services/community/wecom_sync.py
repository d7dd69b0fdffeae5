"""WeCom's customer-group changes applied to Pond's groups: members added and left
become joins and leaves, a dismissed chat archives its group.

Receiving is quick and durable: the receiver (wecom/receiver.py) hands the decrypted
event to `receive`, which writes it (by a hash of its key: WeCom retries a callback
not answered within 5 s, and a replay finds the key taken) with a timer due at once,
and answers; the timer handler applies it. A callback replayed after a later change
(an add replayed after the leave) changes nothing, since its key was seen.

Applying: the group is the one whose WeCom chat id the event names; each member is
found by their WeCom external user id through the member service's FindMember.
Unknown members (and chats Pond has no group for) are recorded as pending, skipped,
not errors: a guide links the group (UpdateGroup wecom_chat_id) or the member binds
the id, and later events apply. A join from WeCom records a fact: the member is in
the WeCom group, so Pond's entry rules (a routing decision) are not asked again; a
group Pond counts as full is skipped with GROUP_FULL and reported. Joins and leaves
go through the membership use cases (each its own unit of work, idempotent: joining
again is `already_member`, leaving twice is skipped), so a handler retried after a
crash applies nothing twice; the event's outcome is written with the timer's firing."""

from __future__ import annotations

import hashlib
from typing import Any

import structlog
from pond.member.v1 import member_pb2

from services.community.domain import groups as dg
from services.community.groups import Groups
from services.community.membership import Membership
from services.community.peers import Peers
from services.community.store import GROUPS, WECOM_EVENTS, WECOM_PENDING
from services.community.wecom.callbacks import GroupChange, GroupChangeEvent
from services.community.writes import Writes
from services.runtime.documents import Doc, DuplicateKey, Timer, UnitOfWork
from services.runtime.errors import FailedPrecondition, NotFound

log = structlog.get_logger("pond.community.wecom")
WECOM_EVENT = "wecom-event"  # timer kind: apply a received WeCom callback
# WeCom vouches for the member being in its group: the facts pass every entry rule.
WECOM_FACTS = dg.EntryFacts(tier_level=1 << 30, has_bought=True, in_segment=True,
                            payment_id="wecom")


def event_id(event: GroupChangeEvent) -> str:
    return hashlib.sha256(event.key.encode()).hexdigest()[:32]


class WeComSync:
    def __init__(self, writes: Writes, membership: Membership, groups: Groups,
                 peers: Peers) -> None:
        self.w = writes
        self.store = writes.store
        self.membership, self.groups, self.peers = membership, groups, peers

    async def receive(self, event: GroupChangeEvent) -> bool:
        """Records the event for applying; False when it was received before."""
        eid = event_id(event)
        now = self.w.now_micros()
        uow = UnitOfWork()
        uow.insert(WECOM_EVENTS.name, {
            "_id": eid, "chat_id": event.chat_id, "change": event.change.value,
            "member_ids": list(event.member_ids), "created_at": event.created_at,
            "member_version": event.member_version, "state": "received",
            "received_at": now, "outcome": {}})
        uow.set_timer(Timer(f"{WECOM_EVENT}:{eid}", WECOM_EVENT, now, {"event_id": eid}))
        try:
            await self.store.commit(uow)
        except DuplicateKey as exc:
            if exc.collection != WECOM_EVENTS.name:
                raise
            return False
        return True

    async def event(self, eid: str) -> Doc | None:
        return await self.store.get(WECOM_EVENTS.name, eid)

    async def pending(self, chat_id: str) -> list[Doc]:
        return await self.store.find(WECOM_PENDING.name, {"chat_id": chat_id}, limit=500)

    async def on_event(self, timer: Timer, uow: UnitOfWork) -> None:
        doc = await self.store.get(WECOM_EVENTS.name, timer.payload["event_id"])
        if doc is None or doc["state"] == "applied":
            return
        outcome: dict[str, list[Any]] = {"joined": [], "left": [], "pending": [], "skipped": []}
        change = GroupChange(doc["change"])
        found = await self.store.find(GROUPS.name, {"wecom_chat_id": doc["chat_id"]}, limit=1)
        group = found[0] if found else None
        if group is None:
            if change is not GroupChange.OTHER:
                self._pending(uow, doc, "", "UNKNOWN_CHAT")
                outcome["pending"].append(doc["chat_id"])
        elif change is GroupChange.DISMISSED:
            await self.groups.archive(group["_id"], reason="dismissed")
        elif change in (GroupChange.MEMBERS_ADDED, GroupChange.MEMBERS_LEFT):
            for external_id in doc["member_ids"]:
                member_id = await self._member(external_id)
                if member_id is None:
                    self._pending(uow, doc, external_id, "UNKNOWN_MEMBER")
                    outcome["pending"].append(external_id)
                    continue
                try:
                    if change is GroupChange.MEMBERS_ADDED:
                        await self._join(group["_id"], member_id)
                        outcome["joined"].append(member_id)
                    else:
                        await self.membership.leave(group["_id"], member_id)
                        outcome["left"].append(member_id)
                except FailedPrecondition as exc:  # full, archived, not in the group
                    outcome["skipped"].append({"member_id": member_id, "reason": exc.reason})
        uow.replace(WECOM_EVENTS.name, {**doc, "state": "applied", "outcome": outcome,
                                        "group_id": group["_id"] if group else ""})
        log.info("wecom callback applied", chat_id=doc["chat_id"], change=doc["change"],
                 **{k: len(v) for k, v in outcome.items()})

    def _pending(self, uow: UnitOfWork, doc: Doc, external_id: str, reason: str) -> None:
        uow.put(WECOM_PENDING.name, {
            "_id": f"{doc['chat_id']}:{external_id}", "chat_id": doc["chat_id"],
            "external_user_id": external_id, "change": doc["change"], "reason": reason,
            "event_id": doc["_id"], "time": self.w.now_micros()})

    async def _member(self, external_id: str) -> str | None:
        client = self.peers.members
        try:
            member = await client.call(client.stub.FindMember, member_pb2.FindMemberRequest(
                identity=member_pb2.Identity(
                    kind=member_pb2.IDENTITY_KIND_WECOM_EXTERNAL_USERID, value=external_id)))
        except NotFound:
            return None
        return str(member.id)

    async def _join(self, group_id: str, member_id: str) -> None:
        async def attempt() -> None:
            group = await self.w.need(GROUPS.name, "group", group_id)
            uow = UnitOfWork()
            joined = await self.membership.add_member(
                uow, group, member_id, await self.membership.member_stats(member_id), WECOM_FACTS)
            if not joined.already_member:
                await self.store.commit(uow)

        await self.w.run(("group", group_id), attempt)  # a refusal: FailedPrecondition
