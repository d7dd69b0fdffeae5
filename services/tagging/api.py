"""The TaggingService servicer: checks input, calls the use cases, builds protos."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from pond.tagging.v1 import tagging_pb2 as pb
from pond.tagging.v1 import tagging_pb2_grpc

from services.runtime.auth import Role, current_caller, ensure_acts_for
from services.runtime.clock import timestamp_from_micros
from services.runtime.errors import Violations, invalid_argument
from services.runtime.paging import decode_token, encode_token, page_size
from services.tagging.app import TaggingApp
from services.tagging.catalogue import DOMAIN
from services.tagging.domain.definitions import (
    MANUAL,
    RULE,
    SCORE,
    SegmentDefinition,
    TagDefinition,
)
from services.tagging.domain.scoring_runs import Run
from services.tagging.runs import ScoringRunner
from services.tagging.tags import CategoryCycle

OPS = frozenset({Role.OPERATOR, Role.SERVICE})
STAFF = OPS | {Role.GUIDE}
AUTH_RULES: dict[str, frozenset[Role]] = {
    "CreateTag": OPS,
    "GetTag": STAFF,
    "ListTags": STAFF,
    "UpdateTag": OPS,
    "ListTagVersions": STAFF,
    "AssignTags": STAFF,
    "RemoveTags": STAFF,
    "GetMemberProfile": STAFF,
    "StartScoringRun": OPS,
    "WatchScoringRun": OPS,
    "GetScoringRun": OPS,
    "ListScoringRuns": OPS,
    "CancelScoringRun": OPS,
    "SetCategoryCycle": OPS,
    "ListCategoryCycles": STAFF,
    "PreviewSegment": OPS,
    "CreateSegment": OPS,
    "GetSegment": STAFF,
    "ListSegments": STAFF,
    "UpdateSegment": OPS,
    "CheckMembership": STAFF | {Role.GATEWAY},
    "StreamSegmentMembers": OPS,
    "ListSegmentVersions": STAFF,
}
RUN_STATES = {"running": 1, "succeeded": 2, "failed": 3, "cancelled": 4}
KINDS = {pb.TAG_KIND_MANUAL: MANUAL, pb.TAG_KIND_RULE: RULE, pb.TAG_KIND_SCORE: SCORE}
KIND_NUMBERS = {v: k for k, v in KINDS.items()}
MAX_RUN_ID = 64


def ts(micros: int) -> Timestamp | None:
    return timestamp_from_micros(int(micros)) if micros else None


def day_ts(day: int) -> Timestamp:
    return timestamp_from_micros(day * 86_400_000_000)


def tag_pb(d: TagDefinition, count: int) -> pb.Tag:
    return pb.Tag(
        name=d.name,
        kind=KIND_NUMBERS[d.kind],
        group=d.group,
        display_name=d.display_name,
        description=d.description,
        expression=d.expression,
        version=d.version,
        member_count=count,
        create_time=ts(d.create_time),
        update_time=ts(d.update_time),
    )


def segment_pb(d: SegmentDefinition, count: int) -> pb.Segment:
    """`count` is the live membership (real-time changes included)."""
    return pb.Segment(
        id=d.id,
        display_name=d.display_name,
        description=d.description,
        expression=d.expression,
        version=d.version,
        count=count,
        create_time=ts(d.create_time),
        update_time=ts(d.update_time),
    )


def run_pb(run: Run) -> pb.ScoringRun:
    return pb.ScoringRun(
        id=run.id,
        state=RUN_STATES[run.state],
        segment_id=run.segment_id,
        partition=run.partition,
        partitions=run.partitions,
        stage=run.stage,
        members_total=run.members_total,
        members_scored=run.members_scored,
        tags_gained=run.tags_gained,
        tags_lost=run.tags_lost,
        events_published=run.events_published,
        duration_seconds=run.duration_seconds,
        errors=run.errors,
        start_time=ts(run.start_time),
        end_time=ts(run.end_time),
    )


def cycle_pb(c: CategoryCycle) -> pb.CategoryCycle:
    return pb.CategoryCycle(
        category=c.category, configured_days=c.configured_days, learned_days=c.learned_days
    )


def _paths(mask, allowed: set[str], v: Violations) -> set[str]:
    paths = set(mask.paths)
    if not paths:
        v.add("update_mask", "name the fields to update")
    for p in paths - allowed:
        v.add("update_mask", f"{p!r} cannot be updated")
    return paths


class TaggingServicer(tagging_pb2_grpc.TaggingServiceServicer):
    def __init__(self, app: TaggingApp, runner: ScoringRunner) -> None:
        self.app = app
        self.runner = runner

    # -- catalogue --
    async def CreateTag(self, request: pb.CreateTagRequest, context) -> pb.Tag:
        t = request.tag
        if t.kind not in KINDS:
            raise invalid_argument([("tag.kind", "is required: MANUAL or RULE")], domain=DOMAIN)
        d = await self.app.create_tag(
            t.name,
            KINDS[t.kind],
            t.group[:64],
            t.display_name[:64],
            t.description[:500],
            t.expression,
        )
        return tag_pb(d, self.app.tag_count(t.name))

    async def GetTag(self, request: pb.GetTagRequest, context) -> pb.Tag:
        return tag_pb(self.app.tag(request.name), self.app.tag_count(request.name))

    async def ListTags(self, request: pb.ListTagsRequest, context) -> pb.ListTagsResponse:
        v = Violations(DOMAIN)
        limit = page_size(request.page_size, v)
        after = str((decode_token(request.page_token, v) or {}).get("a", ""))
        if request.kind and request.kind not in KINDS:
            v.add("kind", f"unknown value {request.kind}")
        v.raise_if_any()
        chosen = self.app.list_tags(
            after, limit + 1, kind=KINDS.get(request.kind, ""), group=request.group
        )
        token = encode_token({"a": chosen[limit - 1].name}) if len(chosen) > limit else ""
        return pb.ListTagsResponse(
            tags=[tag_pb(d, self.app.tag_count(d.name)) for d in chosen[:limit]],
            next_page_token=token,
        )

    async def UpdateTag(self, request: pb.UpdateTagRequest, context) -> pb.Tag:
        v = Violations(DOMAIN)
        paths = _paths(
            request.update_mask, {"display_name", "group", "description", "expression"}, v
        )
        v.raise_if_any()
        d = await self.app.update_tag(
            request.tag.name, **{p: getattr(request.tag, p) for p in paths}
        )
        return tag_pb(d, self.app.tag_count(d.name))

    async def ListTagVersions(self, request, context) -> pb.ListTagVersionsResponse:
        return pb.ListTagVersionsResponse(
            versions=[
                pb.TagVersion(
                    version=v.version, expression=v.expression, create_time=ts(v.create_time)
                )
                for v in await self.app.tag_versions(request.name)
            ]
        )

    async def AssignTags(self, request: pb.AssignTagsRequest, context) -> pb.ChangeTagsResponse:
        return await self._change(request, assign=True)

    async def RemoveTags(self, request: pb.RemoveTagsRequest, context) -> pb.ChangeTagsResponse:
        return await self._change(request, assign=False)

    async def _change(self, request, *, assign: bool) -> pb.ChangeTagsResponse:
        caller = current_caller.get()
        by = f"{caller.role}:{caller.subject}" if caller else "unknown"
        changed = await self.app.change_manual(
            list(request.member_ids), list(request.tag_names), by, assign
        )
        return pb.ChangeTagsResponse(changed=changed)

    async def GetMemberProfile(self, request, context) -> pb.MemberProfile:
        p = await self.app.profile(request.member_id)
        return pb.MemberProfile(
            member_id=p.member_id,
            features=p.features,
            scores=p.scores,
            tags=[
                pb.MemberTag(
                    name=t.name,
                    display_name=t.display_name,
                    kind=KIND_NUMBERS[t.kind],
                    source=t.source,
                    since=ts(t.since),
                )
                for t in p.tags
            ],
            repurchase=[
                pb.RepurchaseDue(category=r.category, due_time=day_ts(r.due_day), due=r.due)
                for r in p.repurchase
            ],
        )

    # -- runs --
    async def StartScoringRun(self, request: pb.StartScoringRunRequest, context) -> pb.ScoringRun:
        v = Violations(DOMAIN)
        partitions = request.partitions or 1
        if not 1 <= partitions <= 64:
            v.add("partitions", "1..64")
        if request.partition != 0:
            v.add(
                "partition",
                "the service runs partition 0; workers run the others"
                " (python -m services.tagging.worker)",
            )
        v.raise_if_any()
        run = await self.runner.start(
            segment_id=request.segment_id,
            partitions=partitions,
            resume_run_id=request.resume_run_id,
        )
        return run_pb(run)

    async def WatchScoringRun(self, request: pb.WatchScoringRunRequest, context):
        async for run in self.runner.watch(request.run_id):
            yield run_pb(run)

    async def GetScoringRun(self, request, context) -> pb.ScoringRun:
        return run_pb(await self.runner.get(request.run_id))

    async def ListScoringRuns(self, request, context) -> pb.ListScoringRunsResponse:
        v = Violations(DOMAIN)
        limit = page_size(request.page_size, v)
        before = str((decode_token(request.page_token, v) or {}).get("b", ""))
        v.raise_if_any()
        runs = await self.runner.recent(before, limit + 1)
        token = encode_token({"b": runs[limit - 1].id}) if len(runs) > limit else ""
        return pb.ListScoringRunsResponse(
            runs=[run_pb(r) for r in runs[:limit]], next_page_token=token
        )

    async def CancelScoringRun(self, request: pb.CancelScoringRunRequest, context) -> pb.ScoringRun:
        if not 1 <= len(request.run_id) <= MAX_RUN_ID:
            raise invalid_argument(
                [("run_id", f"the id of a scoring run, 1-{MAX_RUN_ID} characters")], domain=DOMAIN
            )
        return run_pb(await self.runner.cancel(request.run_id))

    async def SetCategoryCycle(self, request, context) -> pb.CategoryCycle:
        await self.app.set_cycle(request.category, request.days)
        return cycle_pb(self.app.category_cycle(request.category))

    async def ListCategoryCycles(self, request, context) -> pb.ListCategoryCyclesResponse:
        cycles, untracked = self.app.category_cycles()
        return pb.ListCategoryCyclesResponse(
            cycles=[cycle_pb(c) for c in cycles], untracked_categories=untracked
        )

    # -- segments --
    async def PreviewSegment(self, request, context) -> pb.PreviewSegmentResponse:
        if not 0 <= request.sample_size <= 100:
            raise invalid_argument([("sample_size", "0..100")], domain=DOMAIN)
        count, sample = await self.app.preview(request.expression, request.sample_size or 10)
        return pb.PreviewSegmentResponse(count=count, sample_member_ids=sample)

    async def CreateSegment(self, request, context) -> pb.Segment:
        s = request.segment
        d = await self.app.create_segment(
            s.id, s.expression, s.display_name[:64], s.description[:500]
        )
        return segment_pb(d, self.app.segment_count(d.id))

    async def GetSegment(self, request, context) -> pb.Segment:
        return segment_pb(self.app.segment(request.id), self.app.segment_count(request.id))

    async def ListSegments(self, request, context) -> pb.ListSegmentsResponse:
        v = Violations(DOMAIN)
        limit = page_size(request.page_size, v)
        after = str((decode_token(request.page_token, v) or {}).get("a", ""))
        v.raise_if_any()
        page = self.app.list_segments(after, limit + 1)
        token = encode_token({"a": page[limit - 1].id}) if len(page) > limit else ""
        return pb.ListSegmentsResponse(
            segments=[segment_pb(d, self.app.segment_count(d.id)) for d in page[:limit]],
            next_page_token=token,
        )

    async def UpdateSegment(self, request, context) -> pb.Segment:
        v = Violations(DOMAIN)
        paths = _paths(request.update_mask, {"display_name", "description", "expression"}, v)
        v.raise_if_any()
        d = await self.app.update_segment(
            request.segment.id, **{p: getattr(request.segment, p) for p in paths}
        )
        return segment_pb(d, self.app.segment_count(d.id))

    async def CheckMembership(
        self, request: pb.CheckMembershipRequest, context
    ) -> pb.CheckMembershipResponse:
        if not request.member_id or not 1 <= len(request.segment_ids) <= 100:
            raise invalid_argument(
                [("segment_ids", "1..100 segment ids and a member_id")], domain=DOMAIN
            )
        ensure_acts_for(request.member_id)
        response = pb.CheckMembershipResponse()
        memberships = response.memberships  # item by item: the map's update() is slower
        for seg_id, member in self.app.check(request.member_id, request.segment_ids).items():
            memberships[seg_id] = member
        return response

    async def StreamSegmentMembers(self, request, context):
        chunk = request.chunk_size or 1000
        if not 1 <= chunk <= 10_000:
            raise invalid_argument([("chunk_size", "1..10000")], domain=DOMAIN)
        async for ids, cursor, version in self.app.stream_members(
            request.id, request.cursor, chunk
        ):
            yield pb.SegmentMembersChunk(member_ids=ids, cursor=cursor, version=version)

    async def ListSegmentVersions(self, request, context) -> pb.ListSegmentVersionsResponse:
        v = Violations(DOMAIN)
        limit = page_size(request.page_size, v)
        before = int((decode_token(request.page_token, v) or {}).get("v", 0))
        v.raise_if_any()
        versions = [
            v
            for v in await self.app.segment_versions(request.id)
            if not before or v.version < before
        ][: limit + 1]
        token = encode_token({"v": versions[limit - 1].version}) if len(versions) > limit else ""
        return pb.ListSegmentVersionsResponse(
            versions=[
                pb.SegmentVersion(
                    version=v.version,
                    count=v.count,
                    added=v.added,
                    removed=v.removed,
                    sample_added=v.sample_added,
                    sample_removed=v.sample_removed,
                    reason=v.reason,
                    create_time=ts(v.create_time),
                )
                for v in versions[:limit]
            ],
            next_page_token=token,
        )
