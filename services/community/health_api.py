"""The activity and health RPCs of CommunityService (a mixin of the servicer in
api.py): request checks and protos. The use cases are in activity.py."""

from __future__ import annotations

from datetime import timedelta

from pond.community.v1 import community_pb2 as pb

from services.community import validation as val
from services.community.activity import Activity
from services.community.domain import columns as dcol
from services.community.domain import health as dh
from services.community.writes import DOMAIN
from services.runtime import paging
from services.runtime.documents import Doc
from services.runtime.errors import Violations
from services.runtime.fields import check_id

MAX_MEMBERS_PER_DAY = 500
MAX_MESSAGES = 100_000  # per member and day
ACTIVITY_DAYS_BACK = 90
MAX_WEEKS = 26
PHASES = {
    dh.Phase.HEALTHY: pb.GROUP_HEALTH_PHASE_HEALTHY,
    dh.Phase.TOO_NEW: pb.GROUP_HEALTH_PHASE_TOO_NEW,
    dh.Phase.WRONG_TRAFFIC: pb.GROUP_HEALTH_PHASE_WRONG_TRAFFIC,
    dh.Phase.TOPICS_DRIED_UP: pb.GROUP_HEALTH_PHASE_TOPICS_DRIED_UP,
    dh.Phase.NO_VALUE: pb.GROUP_HEALTH_PHASE_NO_VALUE,
}


def health_pb(group: Doc, d: dh.Diagnosis) -> pb.GroupHealth:
    return pb.GroupHealth(
        group_id=group["_id"], group_name=group["name"], score_7d=d.score_7d,
        score_30d=d.score_30d, phase=PHASES[d.phase],
        evidence={k: float(v) for k, v in d.evidence.items()}, suggestion=d.suggestion,
        age_days=d.age_days, member_count=group["member_count"])


def day_pb(d: Doc) -> pb.GroupActivityDay:
    return pb.GroupActivityDay(group_id=d["group_id"], day=d["day"], messages=d["messages"],
                               speakers=d["speakers"], check_ins=d["check_ins"],
                               chain_joins=d["chain_joins"], orders=d["orders"])


class HealthApi:
    """RecordGroupActivity .. GetColumnEffect (CommunityServicer inherits them)."""

    activity: Activity

    async def RecordGroupActivity(self, request: pb.RecordGroupActivityRequest,
                                  context) -> pb.GroupActivityDay:
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id, required=True)
        day = dcol.parse_day(request.day)
        today = self.activity.today()
        if day is None:
            v.add("day", "is required, as YYYY-MM-DD (the brand's calendar)")
        elif not today - timedelta(days=ACTIVITY_DAYS_BACK) <= day <= today:
            v.add("day", f"must be within the last {ACTIVITY_DAYS_BACK} days, not in the future")
        v.check(len(request.members) <= MAX_MEMBERS_PER_DAY, "members",
                f"at most {MAX_MEMBERS_PER_DAY}")
        seen: set[str] = set()
        for i, m in enumerate(request.members[:MAX_MEMBERS_PER_DAY]):
            check_id(v, f"members[{i}].member_id", m.member_id, required=True)
            v.check(m.member_id not in seen, f"members[{i}].member_id", "listed twice")
            seen.add(m.member_id)
            v.check(0 <= m.messages <= MAX_MESSAGES, f"members[{i}].messages",
                    f"0..{MAX_MESSAGES}")
        v.raise_if_any()
        doc = await self.activity.record(request.group_id, request.day,
                                         {m.member_id: m.messages for m in request.members})
        return day_pb(doc)

    async def GetGroupHealth(self, request: pb.GetGroupHealthRequest,
                             context) -> pb.GroupHealth:
        v = Violations(DOMAIN)
        check_id(v, "group_id", request.group_id, required=True)
        v.raise_if_any()
        return health_pb(*await self.activity.group_health(request.group_id))

    async def RankGroupsByHealth(self, request: pb.RankGroupsByHealthRequest,
                                 context) -> pb.RankGroupsByHealthResponse:
        v = Violations(DOMAIN)
        check_id(v, "store_id", request.store_id)
        val.text(v, "city", request.city, 100)
        v.check(request.kind == 0 or request.kind in val.KINDS, "kind", "must be a GroupKind")
        page = paging.begin(request, v, {"o": int})
        v.raise_if_any()
        where = {name: getattr(request, name) for name in ("store_id", "city", "kind")
                 if getattr(request, name)}
        ranked = await self.activity.ranked(where)
        offset = page.get("o", 0)
        window = [(offset + i, item) for i, item in enumerate(ranked[offset:offset + page.fetch])]
        window, token = page.finish(window, lambda item: {"o": item[0] + 1})
        return pb.RankGroupsByHealthResponse(
            groups=[health_pb(g, d) for _i, (g, d) in window], next_page_token=token)

    async def GetColumnEffect(self, request: pb.GetColumnEffectRequest,
                              context) -> pb.ColumnEffect:
        v = Violations(DOMAIN)
        check_id(v, "column_id", request.column_id, required=True)
        v.check(0 <= request.weeks <= MAX_WEEKS, "weeks", f"0..{MAX_WEEKS} (0: 8)")
        v.raise_if_any()
        effect, groups = await self.activity.column_effect(request.column_id,
                                                           request.weeks or 8)
        return pb.ColumnEffect(column_id=request.column_id, groups=groups, weekdays=[
            pb.WeekdayEffect(weekday=w + 1, ratio=e.ratio, posted_days=e.posted_days,
                             other_days=e.other_days) for w, e in sorted(effect.items())])
