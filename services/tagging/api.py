"""The TaggingService servicer: checks input, calls the use cases, builds protos."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from pond.tagging.v1 import tagging_pb2 as pb
from pond.tagging.v1 import tagging_pb2_grpc

from services.runtime import paging
from services.runtime.auth import (
    BACK_OFFICE,
    EVERYONE,
    OPERATORS,
    STAFF,
    current_caller,
    ensure_acts_for,
)
from services.runtime.clock import timestamp_from_micros
from services.runtime.errors import NotFound, Violations, invalid_argument
from services.runtime.fields import MAX_ID_CHARS, check_id, check_ids
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

# Who may call what (the role sets are the runtime's). OPERATORS only: the tag and
# segment definitions and category cycles, the brand's decisions, which a service
# token cannot make; runs (the nightly job) and reads are BACK_OFFICE or wider.
AUTH_RULES = {
    "CreateTag": OPERATORS,
    "GetTag": STAFF,
    "ListTags": STAFF,
    "UpdateTag": OPERATORS,
    "ListTagVersions": STAFF,
    "AssignTags": STAFF,
    "RemoveTags": STAFF,
    "GetMemberProfile": STAFF,
    "StartScoringRun": BACK_OFFICE,
    "WatchScoringRun": BACK_OFFICE,
    "GetScoringRun": BACK_OFFICE,
    "ListScoringRuns": BACK_OFFICE,
    "CancelScoringRun": BACK_OFFICE,
    "SetCategoryCycle": OPERATORS,
    "ListCategoryCycles": STAFF,
    "PreviewSegment": BACK_OFFICE,
    "CreateSegment": OPERATORS,
    "GetSegment": STAFF,
    "ListSegments": STAFF,
    "UpdateSegment": OPERATORS,
    "CheckMembership": EVERYONE,
    "StreamSegmentMembers": BACK_OFFICE,
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


def _ids(*fields: tuple[str, str, bool]) -> None:
    """Checks (path, value, required) ids; INVALID_ARGUMENT for any that is missing
    or too long, before it is looked up (or echoed in an error)."""
    v = Violations(DOMAIN)
    for path, value, required in fields:
        check_id(v, path, value, required=required)
    v.raise_if_any()


def _paths(mask, allowed: set[str], v: Violations) -> set[str]:
    paths = set(mask.paths)
    if not paths:
        v.add("update_mask", "name the fields to update")
    for p in paths - allowed:
        v.add("update_mask", f"{p!r} cannot be updated")
    return paths


class MembershipAnswers:
    """CheckMembership's answers, each built once: the calls of one client ask about
    the same few segments, so there are few distinct answers (2^n for n segments),
    and a message built once costs its serialization only (grpc serializes it after
    the handler returns and nothing changes it). Only answers about at most
    `max_segments` segments are kept, at most `limit` of them (past that the table
    starts over): a few MB at worst, whatever the callers ask."""

    def __init__(self, limit: int = 4096, max_segments: int = 8) -> None:
        self._limit, self._max_segments = limit, max_segments
        self._built: dict[tuple[tuple[str, bool], ...], pb.CheckMembershipResponse] = {}

    def answer(self, found: dict[str, bool]) -> pb.CheckMembershipResponse:
        if len(found) > self._max_segments:
            return pb.CheckMembershipResponse(memberships=found)
        key = tuple(found.items())
        built = self._built.get(key)
        if built is None:
            if len(self._built) >= self._limit:
                self._built.clear()
            built = self._built[key] = pb.CheckMembershipResponse(memberships=found)
        return built


def _check_membership_request(member_id: str, seg_ids: list[str]) -> None:
    """Raises INVALID_ARGUMENT naming what is wrong with a CheckMembership request."""
    v = Violations(DOMAIN)
    check_id(v, "member_id", member_id, required=True)
    v.check(1 <= len(seg_ids) <= 100, "segment_ids", "1..100 segment ids")
    check_ids(v, "segment_ids", seg_ids)
    v.raise_if_any()


class TaggingServicer(tagging_pb2_grpc.TaggingServiceServicer):
    def __init__(self, app: TaggingApp, runner: ScoringRunner) -> None:
        self.app = app
        self.runner = runner
        self._answers = MembershipAnswers()

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
        _ids(("name", request.name, True))
        return tag_pb(self.app.tag(request.name), self.app.tag_count(request.name))

    async def ListTags(self, request: pb.ListTagsRequest, context) -> pb.ListTagsResponse:
        v = Violations(DOMAIN)
        page = paging.begin(request, v, {"a": str})
        if request.kind and request.kind not in KINDS:
            v.add("kind", f"unknown value {request.kind}")
        v.raise_if_any()
        chosen = self.app.list_tags(
            page.get("a", ""), page.fetch, kind=KINDS.get(request.kind, ""), group=request.group
        )
        tags, token = page.finish(chosen, lambda d: {"a": d.name})
        return pb.ListTagsResponse(
            tags=[tag_pb(d, self.app.tag_count(d.name)) for d in tags], next_page_token=token
        )

    async def UpdateTag(self, request: pb.UpdateTagRequest, context) -> pb.Tag:
        v = Violations(DOMAIN)
        check_id(v, "tag.name", request.tag.name, required=True)
        paths = _paths(
            request.update_mask, {"display_name", "group", "description", "expression"}, v
        )
        v.raise_if_any()
        d = await self.app.update_tag(
            request.tag.name, **{p: getattr(request.tag, p) for p in paths}
        )
        return tag_pb(d, self.app.tag_count(d.name))

    async def ListTagVersions(self, request, context) -> pb.ListTagVersionsResponse:
        _ids(("name", request.name, True))
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
        v = Violations(DOMAIN)
        check_ids(v, "member_ids", request.member_ids)
        check_ids(v, "tag_names", request.tag_names)
        v.raise_if_any()
        caller = current_caller.get()
        by = f"{caller.role}:{caller.subject}" if caller else "unknown"
        changed = await self.app.change_manual(
            list(request.member_ids), list(request.tag_names), by, assign
        )
        return pb.ChangeTagsResponse(changed=changed)

    async def GetMemberProfile(self, request, context) -> pb.MemberProfile:
        _ids(("member_id", request.member_id, True))
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
        check_id(v, "segment_id", request.segment_id)
        check_id(v, "resume_run_id", request.resume_run_id)
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
        _ids(("run_id", request.run_id, True))
        async for run in self.runner.watch(request.run_id):
            yield run_pb(run)

    async def GetScoringRun(self, request, context) -> pb.ScoringRun:
        _ids(("run_id", request.run_id, True))
        return run_pb(await self.runner.get(request.run_id))

    async def ListScoringRuns(self, request, context) -> pb.ListScoringRunsResponse:
        v = Violations(DOMAIN)
        page = paging.begin(request, v, {"b": str})
        v.raise_if_any()
        found = await self.runner.recent(page.get("b", ""), page.fetch)
        runs, token = page.finish(found, lambda r: {"b": r.id})
        return pb.ListScoringRunsResponse(runs=[run_pb(r) for r in runs], next_page_token=token)

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
        _ids(("id", request.id, True))
        return segment_pb(self.app.segment(request.id), self.app.segment_count(request.id))

    async def ListSegments(self, request, context) -> pb.ListSegmentsResponse:
        v = Violations(DOMAIN)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        found = self.app.list_segments(page.get("a", ""), page.fetch)
        segments, token = page.finish(found, lambda d: {"a": d.id})
        return pb.ListSegmentsResponse(
            segments=[segment_pb(d, self.app.segment_count(d.id)) for d in segments],
            next_page_token=token,
        )

    async def UpdateSegment(self, request, context) -> pb.Segment:
        v = Violations(DOMAIN)
        check_id(v, "segment.id", request.segment.id, required=True)
        paths = _paths(request.update_mask, {"display_name", "description", "expression"}, v)
        v.raise_if_any()
        d = await self.app.update_segment(
            request.segment.id, **{p: getattr(request.segment, p) for p in paths}
        )
        return segment_pb(d, self.app.segment_count(d.id))

    async def CheckMembership(
        self, request: pb.CheckMembershipRequest, context
    ) -> pb.CheckMembershipResponse:
        # A slice copies the repeated field in one C call; iterating it ends each pass
        # with an IndexError raised and caught inside protobuf.
        member_id, seg_ids = request.member_id, request.segment_ids[:]
        # One cheap test on the hot path. The segment ids are checked in full only when
        # one is not found: an empty or over-long id names no segment, so every bad
        # request gets there, and is answered INVALID_ARGUMENT rather than NOT_FOUND.
        if not (0 < len(member_id) <= MAX_ID_CHARS and 1 <= len(seg_ids) <= 100):
            _check_membership_request(member_id, seg_ids)
        ensure_acts_for(member_id)
        try:
            found = self.app.check(member_id, seg_ids)
        except NotFound:
            _check_membership_request(member_id, seg_ids)
            raise
        return self._answers.answer(found)

    async def StreamSegmentMembers(self, request, context):
        chunk = request.chunk_size or 1000
        v = Violations(DOMAIN)
        check_id(v, "id", request.id, required=True)
        v.check(1 <= chunk <= 10_000, "chunk_size", "1..10000")
        v.raise_if_any()
        async for ids, cursor, version in self.app.stream_members(
            request.id, request.cursor, chunk
        ):
            yield pb.SegmentMembersChunk(member_ids=ids, cursor=cursor, version=version)

    async def ListSegmentVersions(self, request, context) -> pb.ListSegmentVersionsResponse:
        v = Violations(DOMAIN)
        check_id(v, "id", request.id, required=True)
        page = paging.begin(request, v, {"v": int})
        v.raise_if_any()
        before = page.get("v", 0)
        found = [
            sv
            for sv in await self.app.segment_versions(request.id)
            if not before or sv.version < before
        ][: page.fetch]
        versions, token = page.finish(found, lambda sv: {"v": sv.version})
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
                for v in versions
            ],
            next_page_token=token,
        )
