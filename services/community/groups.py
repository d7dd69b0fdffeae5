"""Groups: create, read, list, update, archive; a group with an end time (a flash
group) is archived at that time by a runtime timer set with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.community.domain import groups as dg
from services.community.events import GroupArchived
from services.community.store import GROUPS, RULES
from services.community.writes import DOMAIN, Writes
from services.runtime.clock import from_epoch_micros
from services.runtime.documents import Doc, DuplicateKey, Timer, UnitOfWork
from services.runtime.errors import already_exists, failed_precondition
from services.runtime.ids import new_id

GROUP_END = "group-end"  # timer kind: archive the group at its end time


def _end_timer(uow: UnitOfWork, group: Doc) -> None:
    timer_id = f"{GROUP_END}:{group['_id']}"
    if group["end_time"] and group["state"] == dg.ACTIVE:
        uow.set_timer(Timer(timer_id, GROUP_END, group["end_time"], {"group_id": group["_id"]}))
    else:
        uow.cancel_timer(timer_id)


class Groups:
    def __init__(self, writes: Writes) -> None:
        self.w = writes
        self.store = writes.store

    async def create(self, group_id: str, fields: Mapping[str, Any]) -> Doc:
        """A new group; one created into a rule's pool takes the pool's next number."""
        group_id = group_id or new_id("g")
        pool_id = fields.get("pool_id", "")

        async def attempt() -> Doc:
            uow = UnitOfWork()
            sequence = await self._take_sequence(uow, pool_id) if pool_id else 0
            group = dg.new_group(group_id, dict(fields), self.w.now_micros(), pool_id=pool_id,
                                 sequence=sequence)
            uow.insert(GROUPS.name, group)
            if group["end_time"]:
                _end_timer(uow, group)
            try:
                await self.store.commit(uow)
            except DuplicateKey as exc:
                if exc.collection != GROUPS.name:
                    raise
                raise already_exists("GROUP_EXISTS", f"group {group_id!r} exists",
                                     domain=DOMAIN, group_id=group_id) from exc
            return group

        return await self.w.run(("pool", pool_id) if pool_id else ("group", group_id), attempt)

    async def _take_sequence(self, uow: UnitOfWork, rule_id: str) -> int:
        rule = await self.store.get(RULES.name, rule_id)
        if rule is None or rule["deleted"]:
            raise failed_precondition("RULE_NOT_FOUND", f"no routing rule {rule_id!r}",
                                      domain=DOMAIN, rule_id=rule_id)
        sequence = int(rule["last_sequence"]) + 1
        uow.replace(RULES.name, {**rule, "last_sequence": sequence})
        return sequence

    async def get(self, group_id: str) -> Doc:
        return await self.w.need(GROUPS.name, "group", group_id)

    async def list_groups(self, where: Mapping[str, Any], after: str, limit: int) -> list[Doc]:
        query = dict(where)
        if after:
            query["_id"] = {"$gt": after}
        return await self.store.find(GROUPS.name, query, limit=limit)

    async def update(self, group_id: str, changes: Mapping[str, Any]) -> Doc:
        async def attempt() -> Doc:
            group = await self.get(group_id)
            updated = dg.updated_group(group, dict(changes), self.w.now_micros())
            uow = UnitOfWork()
            uow.replace(GROUPS.name, updated)
            if "end_time" in changes:
                _end_timer(uow, updated)
            await self.store.commit(uow)
            return updated

        return await self.w.run(("group", group_id), attempt)

    async def archive(self, group_id: str, reason: str = "archived") -> Doc:
        async def attempt() -> Doc:
            group = await self.get(group_id)
            if group["state"] == dg.ARCHIVED:
                return group
            uow = UnitOfWork()
            archived = self._archive(uow, group, reason)
            await self.store.commit(uow)
            return archived

        return await self.w.run(("group", group_id), attempt)

    def _archive(self, uow: UnitOfWork, group: Doc, reason: str) -> Doc:
        now = self.w.now()
        archived = dg.archived_group(group, self.w.now_micros(), reason)
        uow.replace(GROUPS.name, archived)
        _end_timer(uow, archived)
        self.w.emit(uow, group["_id"], GroupArchived(group_id=group["_id"], reason=reason), now)
        return archived

    async def on_group_end(self, timer: Timer, uow: UnitOfWork) -> None:
        """The group's end time came: archived ("ended"), unless it was archived or
        its end time moved meanwhile."""
        group = await self.store.get(GROUPS.name, timer.payload["group_id"])
        if group is None or group["state"] != dg.ACTIVE or group["end_time"] > timer.due_at:
            return
        archived = dg.archived_group(group, self.w.now_micros(), "ended")
        uow.replace(GROUPS.name, archived)
        self.w.emit(uow, group["_id"], GroupArchived(group_id=group["_id"], reason="ended"),
                    from_epoch_micros(max(timer.due_at, 0)))
