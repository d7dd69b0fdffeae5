"""Daily check-in (签到): once per member per day of the brand's calendar
(POND_TIMEZONE, the injected clock), with streak and best streak, announced
(CheckedIn) for rewards. A second check-in the same day returns the first: the day's
record is keyed by member and day, so even racing replicas write it once."""

from __future__ import annotations

from dataclasses import dataclass

from services.community.domain import checkin as dc
from services.community.domain.errors import RuleViolation
from services.community.events import CheckedIn
from services.community.membership import ACTIVE
from services.community.store import CHECKINS, GROUPS, MEMBERSHIPS, STREAKS, membership_id
from services.community.writes import Writes, rule_error
from services.runtime.documents import Doc, UnitOfWork


@dataclass
class Streak:
    member_id: str
    streak: int
    best_streak: int
    total_days: int
    last_day: str
    checked_in_today: bool


class CheckIns:
    def __init__(self, writes: Writes) -> None:
        self.w = writes
        self.store = writes.store

    async def check_in(self, member_id: str, group_id: str) -> tuple[Doc, bool]:
        """(the day's check-in, whether it was there already)."""
        if group_id:
            await self.w.need(GROUPS.name, "group", group_id)
            member = await self.store.get(MEMBERSHIPS.name, membership_id(group_id, member_id))
            if member is None or member["state"] != ACTIVE:
                raise self._not_in_group(group_id, member_id)

        async def attempt() -> tuple[Doc, bool]:
            now = self.w.now()
            today = dc.brand_day(now, self.w.timezone)
            key = f"{member_id}:{today.isoformat()}"
            # The usual check-in reads one document: the streak tells whether today's
            # check-in can exist. A member's first reads none (the streaks' key filter).
            streak = await self.store.get(STREAKS.name, member_id)
            if dc.may_have_checked_in(streak, today):
                first = await self.store.get(CHECKINS.name, key)
                if first is not None:
                    return first, True
            record = dc.next_streak(streak, today)
            doc = {"_id": key, "member_id": member_id, "group_id": group_id,
                   "day": today.isoformat(), "time": self.w.now_micros(), **_counts(record)}
            uow = UnitOfWork()
            uow.insert(CHECKINS.name, doc)
            if streak is None:
                uow.insert(STREAKS.name, {"_id": member_id, **record})
            else:
                uow.replace(STREAKS.name, {**streak, **record})
            self.w.emit(uow, member_id, CheckedIn(
                member_id=member_id, group_id=group_id, day=doc["day"],
                streak=record["streak"], best_streak=record["best_streak"]), now)
            await self.store.commit(uow)
            return doc, False

        return await self.w.run(("check-in", member_id), attempt)

    async def streak(self, member_id: str) -> Streak:
        today = dc.brand_day(self.w.now(), self.w.timezone)
        doc = await self.store.get(STREAKS.name, member_id)
        if doc is None:
            return Streak(member_id, 0, 0, 0, "", False)
        return Streak(member_id, dc.current_streak(doc, today), doc["best_streak"],
                      doc["total_days"], doc["last_day"], doc["last_day"] == today.isoformat())

    @staticmethod
    def _not_in_group(group_id: str, member_id: str) -> Exception:
        return rule_error(RuleViolation("NOT_IN_GROUP",
                                        f"member {member_id!r} is not in group {group_id!r}",
                                        group_id=group_id))


def _counts(record: Doc) -> Doc:
    return {k: record[k] for k in ("streak", "best_streak", "total_days")}
