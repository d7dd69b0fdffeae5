"""Column schedules (栏目化): create, read, list, update, archive; posting at each
occurrence, exactly once per group and occurrence, across restarts and replicas.

How exactly once holds: a column keeps its next occurrence (`next_at`) and one
durable runtime timer "column-due:<id>" due then, both written in the same unit of
work. Firing the timer writes the occurrence's posts (one document per group, keyed
by `occurrence_key`), their outbox events (ColumnPostDue, for the channel adapter),
the column's next occurrence and the timer set again for it, all in the unit of work
that deletes the fired timer guarded by its version: of two replicas that read the
timer, one commit lands; a process killed before the commit leaves the timer in
place and the next start fires it. The post keys are the second line: a firing that
meets posts of its occurrence already written (an update that re-set the same
occurrence) writes nothing for those groups.

A target of a kind may name thousands of groups: a firing writes at most
POST_BATCH posts and sets the timer again at once with the last group id as cursor,
so no unit of work grows with the brand. An occurrence missed while no replica ran
posts late, once; the ones in between are skipped (a morning post three days late
is noise), and the next is the first after now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from services.community.domain import columns as dcol
from services.community.domain.errors import RuleViolation
from services.community.events import ColumnPostDue
from services.community.store import COLUMN_POSTS, COLUMNS, GROUPS
from services.community.writes import DOMAIN, Writes
from services.runtime.clock import from_epoch_micros, timestamp_from_micros
from services.runtime.documents import Doc, DuplicateKey, Timer, UnitOfWork
from services.runtime.errors import already_exists
from services.runtime.ids import new_id

COLUMN_DUE = "column-due"  # timer kind: a column's occurrence is due
POST_BATCH = 500


def timer_id(column_id: str) -> str:
    return f"{COLUMN_DUE}:{column_id}"


class Columns:
    def __init__(self, writes: Writes) -> None:
        self.w = writes
        self.store = writes.store
        self.zone = ZoneInfo(writes.timezone)

    def _schedule(self, uow: UnitOfWork, column: Doc, after: int) -> Doc:
        """The column with its next occurrence after `after`, its timer set (or
        cancelled when none is left or it is archived)."""
        nxt = 0
        if column["state"] == dcol.COLUMN_ACTIVE:
            nxt = dcol.next_after_micros(column["recurrence"], after, self.zone)
        column = {**column, "next_at": nxt}
        if nxt:
            uow.set_timer(Timer(timer_id(column["_id"]), COLUMN_DUE, nxt,
                                {"column_id": column["_id"], "occurrence": nxt}))
        else:
            uow.cancel_timer(timer_id(column["_id"]))
        return column

    async def create(self, column_id: str, fields: Mapping[str, Any]) -> Doc:
        now = self.w.now_micros()
        column: Doc = {"_id": column_id or new_id("col"), **fields,
                       "state": dcol.COLUMN_ACTIVE, "next_at": 0, "last_post_at": 0,
                       "post_count": 0, "create_time": now, "update_time": now}
        if fields["target"].get("group_id"):
            await self.w.need(GROUPS.name, "group", fields["target"]["group_id"])
        uow = UnitOfWork()
        column = self._schedule(uow, column, now)
        uow.insert(COLUMNS.name, column)
        try:
            await self.store.commit(uow)
        except DuplicateKey as exc:
            raise already_exists("COLUMN_EXISTS", f"column {column['_id']!r} exists",
                                 domain=DOMAIN, column_id=column["_id"]) from exc
        return column

    async def get(self, column_id: str) -> Doc:
        return await self.w.need(COLUMNS.name, "column", column_id)

    async def list_columns(self, state: str, after: str, limit: int) -> list[Doc]:
        where: dict[str, Any] = {"state": state} if state else {}
        if after:
            where["_id"] = {"$gt": after}
        return await self.store.find(COLUMNS.name, where, limit=limit)

    async def update(self, column_id: str, changes: Mapping[str, Any]) -> Doc:
        if changes.get("target", {}).get("group_id"):
            await self.w.need(GROUPS.name, "group", changes["target"]["group_id"])

        async def attempt() -> Doc:
            column = await self.get(column_id)
            if column["state"] != dcol.COLUMN_ACTIVE:
                raise RuleViolation("COLUMN_ARCHIVED", f"column {column_id!r} is archived",
                                    column_id=column_id)
            now = self.w.now_micros()
            uow = UnitOfWork()
            updated = self._schedule(uow, {**column, **changes, "update_time": now}, now)
            uow.replace(COLUMNS.name, updated)
            await self.store.commit(uow)
            return updated

        return await self.w.run(("column", column_id), attempt)

    async def archive(self, column_id: str) -> Doc:
        async def attempt() -> Doc:
            column = await self.get(column_id)
            if column["state"] == dcol.COLUMN_ARCHIVED:
                return column
            uow = UnitOfWork()
            archived = {**column, "state": dcol.COLUMN_ARCHIVED, "next_at": 0,
                        "update_time": self.w.now_micros()}
            uow.cancel_timer(timer_id(column_id))
            uow.replace(COLUMNS.name, archived)
            await self.store.commit(uow)
            return archived

        return await self.w.run(("column", column_id), attempt)

    async def posts(self, column_id: str, group_id: str, after: str, limit: int) -> list[Doc]:
        await self.get(column_id)
        where: dict[str, Any] = {"column_id": column_id}
        if after:
            where["_id"] = {"$gt": after}
        if group_id:  # keys start "<column>:<group>:", so a group's posts are a range
            prefix = f"{column_id}:{group_id}:"
            where["_id"] = {"$gt": max(after, prefix), "$lt": prefix + "~"}
        return await self.store.find(COLUMN_POSTS.name, where, limit=limit)

    # -- posting --
    async def _targets(self, column: Doc, after: str, limit: int) -> list[Doc]:
        target = column["target"]
        if target.get("group_id"):
            if after:
                return []
            group = await self.store.get(GROUPS.name, target["group_id"])
            return [group] if group is not None and dcol.targets_group(target, group) else []
        where: dict[str, Any] = {"kind": target["kind"], "state": "active"}
        if after:
            where["_id"] = {"$gt": after}
        found = await self.store.find(GROUPS.name, where, limit=limit)
        return [g for g in found if dcol.targets_group(target, g)] if (
            target.get("store_id") or target.get("city")) else found

    async def on_due(self, timer: Timer, uow: UnitOfWork) -> None:
        """Posts the occurrence to a batch of the target's groups; sets the timer
        again, for the rest of the batch or the next occurrence."""
        column = await self.store.get(COLUMNS.name, timer.payload["column_id"])
        occurrence = int(timer.payload["occurrence"])
        if column is None or column["state"] != dcol.COLUMN_ACTIVE or (
                column["next_at"] != occurrence):
            return  # archived, or moved by an update (which set its own timer)
        cursor = str(timer.payload.get("after", ""))
        groups = await self._targets(column, cursor, POST_BATCH + 1)
        batch = groups[:POST_BATCH]
        moment = from_epoch_micros(occurrence)
        keys = [dcol.occurrence_key(column["_id"], g["_id"], moment) for g in batch]
        written = {d["_id"] for d in await self.store.get_many(COLUMN_POSTS.name, keys)}
        now, now_micros = self.w.now(), self.w.now_micros()
        content = column["content"]
        posted = 0
        for group, key in zip(batch, keys, strict=True):
            if key in written:
                continue
            uow.insert(COLUMN_POSTS.name, {
                "_id": key, "column_id": column["_id"], "group_id": group["_id"],
                "chat_id": group["wecom_chat_id"], "occurrence": occurrence,
                "post_time": now_micros, "content": content})
            self.w.emit(uow, group["_id"], ColumnPostDue(
                column_id=column["_id"], group_id=group["_id"], chat_id=group["wecom_chat_id"],
                title=column["title"], text=content["text"], media_url=content["media_url"],
                link_url=content["link_url"], occurrence=timestamp_from_micros(occurrence),
                key=key), now)
            posted += 1
        column = {**column, "post_count": column["post_count"] + posted,
                  "last_post_at": occurrence if posted else column["last_post_at"]}
        if len(groups) > POST_BATCH:  # more groups: the same occurrence again, at once
            uow.set_timer(Timer(timer.id, COLUMN_DUE, timer.due_at,
                                {**timer.payload, "after": batch[-1]["_id"]}))
        else:
            column = self._schedule(uow, column, max(occurrence, now_micros))
        uow.replace(COLUMNS.name, column)
