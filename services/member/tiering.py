"""Use cases of the tier programme: reading and replacing it, and the periodic
re-evaluation that moves members down (after retention) or up."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from services.member.domain.tiers import TierChange, TierProgram, program_problems, reevaluate
from services.member.events import EventWriter
from services.member.service import DOMAIN, MemberCore
from services.member.store import MemberFilter, MemberWrite
from services.runtime.errors import invalid_argument


class TierUseCases(MemberCore):
    if TYPE_CHECKING:  # MemberUseCases', beside this in MemberApp

        async def lapse_paid_memberships(self, batch: int = 500) -> int: ...

    async def get_program(self) -> TierProgram:
        return await self.tier_program()

    async def update_program(self, program: TierProgram) -> TierProgram:
        problems = program_problems(program)
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        program = TierProgram(
            program.tiers, program.evaluation_window_days, program.retention_days, self.now()
        )
        w = MemberWrite()
        w.set_tier_program(program)
        await self.commit(w)
        self.forget_program()
        return program

    async def evaluate_tiers(self, batch: int = 500) -> tuple[int, int]:
        """The periodic membership re-evaluation: every member above the entry tier
        is re-evaluated, and paid memberships past their end are stored as lapsed.
        Returns (evaluated, moved down)."""
        while await self.lapse_paid_memberships(batch) == batch:
            pass
        evaluated = downgraded = 0
        after = ""
        while True:
            page = await self.store.list_members(MemberFilter(min_tier_level=1), after, batch)
            if not page:
                return evaluated, downgraded
            for m in page:
                evaluated += 1
                downgraded += await self.retrying(m.id, partial(self._reevaluate, m.id))
            after = page[-1].id

    async def _reevaluate(self, member_id: str) -> int:
        m = await self.member(member_id)
        program = await self.tier_program()
        now = self.now()
        qualifying = await self.store.growth_since(m.id, program.window_start(now))
        target = reevaluate(program, m.tier_level, m.tier_since, qualifying, now)
        if target is None:
            return 0
        reason = "re-evaluation"
        events = EventWriter(now)
        events.tier(m.id, m.tier_level, target, reason)
        w = MemberWrite()
        w.add_tier_change(TierChange(m.id, m.tier_level, target, reason, now))
        moved_down = int(target < m.tier_level)
        m.tier_level, m.tier_since = target, now
        self.touch(m, now)
        w.save_member(m)
        w.emit(*events.events)
        await self.commit(w)
        return moved_down

    async def list_tier_changes(
        self, member_id: str, before_seq: int, limit: int
    ) -> list[tuple[int, TierChange]]:
        await self.member(member_id)
        return await self.store.list_tier_changes(member_id, before_seq, limit)
