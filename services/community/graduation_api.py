"""The GraduateMembers RPC of CommunityService (a mixin of the servicer in api.py):
request checks and the report as a proto. The use case is graduation.py."""

from __future__ import annotations

from pond.community.v1 import community_pb2 as pb

from services.community import validation as val
from services.community.graduation import Graduation
from services.community.writes import DOMAIN
from services.runtime.errors import Violations
from services.runtime.fields import check_id


class GraduationApi:
    graduation: Graduation

    async def GraduateMembers(self, request: pb.GraduateMembersRequest,
                              context) -> pb.GraduateMembersResponse:
        v = Violations(DOMAIN)
        v.check(bool(request.graduation_id), "graduation_id", "is required")
        val.client_id(v, "graduation_id", request.graduation_id)
        check_id(v, "segment_id", request.segment_id, required=True)
        check_id(v, "target_rule_id", request.target_rule_id, required=True)
        v.raise_if_any()
        r = await self.graduation.graduate(request.graduation_id, request.segment_id,
                                           request.target_rule_id, request.dry_run)
        return pb.GraduateMembersResponse(
            graduation_id=r.graduation_id, dry_run=r.dry_run,
            moves=[pb.GraduationMove(**m) for m in r.moves],
            skipped=[pb.GraduationSkip(**s) for s in r.skipped],
            segment_members=r.segment_members, not_in_first_level=r.not_in_first_level,
            replayed=r.replayed)
