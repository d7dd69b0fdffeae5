"""The column RPCs of CommunityService (a mixin of the servicer in api.py): request
checks, protos <-> column documents. Thin: the use cases are in columns.py."""

from __future__ import annotations

from datetime import date
from typing import Any

from pond.community.v1 import community_pb2 as pb

from services.community import validation as val
from services.community.columns import Columns
from services.community.convert import micros_of, ts
from services.community.domain import columns as dcol
from services.community.writes import DOMAIN
from services.runtime import paging
from services.runtime.errors import Violations
from services.runtime.fields import check_id, timestamp

Doc = dict[str, Any]
CADENCES = {pb.COLUMN_CADENCE_ONCE: dcol.Cadence.ONCE, pb.COLUMN_CADENCE_DAILY: dcol.Cadence.DAILY,
            pb.COLUMN_CADENCE_WEEKLY: dcol.Cadence.WEEKLY}
CADENCE_PB = {v.value: k for k, v in CADENCES.items()}
COLUMN_STATES = {dcol.COLUMN_ACTIVE: pb.COLUMN_STATE_ACTIVE,
                 dcol.COLUMN_ARCHIVED: pb.COLUMN_STATE_ARCHIVED}
COLUMN_STATE_NAMES = {v: k for k, v in COLUMN_STATES.items()}
COLUMN_PATHS = {"title", "content", "recurrence", "target"}
MAX_URL = 1000
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2099, 12, 31)  # far from datetime's edges


# -- checks --
def _content(v: Violations, c: pb.ColumnContent) -> None:
    val.text(v, "column.content.text", c.text, dcol.MAX_TEXT,
             required=not (c.media_url or c.link_url))
    val.text(v, "column.content.media_url", c.media_url, MAX_URL)
    val.text(v, "column.content.link_url", c.link_url, MAX_URL)


def _recurrence(v: Violations, r: pb.ColumnRecurrence) -> None:
    path = "column.recurrence"
    if r.cadence not in CADENCES:
        v.add(f"{path}.cadence", "a ColumnCadence is required")
        return
    if r.cadence == pb.COLUMN_CADENCE_ONCE:
        timestamp(v, r, "once_time", path=f"{path}.once_time", required=True)
    else:
        v.check(dcol.parse_at(r.at_time) is not None, f"{path}.at_time",
                "is required, as HH:MM (24 h, the brand's time zone)")
    if r.cadence == pb.COLUMN_CADENCE_WEEKLY:
        v.check(bool(r.weekdays), f"{path}.weekdays", "a weekly column needs its weekdays")
        v.check(all(1 <= d <= 7 for d in r.weekdays), f"{path}.weekdays",
                "1 (Monday) .. 7 (Sunday)")
    elif r.weekdays:
        v.add(f"{path}.weekdays", "only for a weekly column")
    for name in ("starts_on", "ends_on"):
        value = getattr(r, name)
        day = dcol.parse_day(value)
        v.check(not value or (day is not None and FIRST_DAY <= day <= LAST_DAY),
                f"{path}.{name}", "must be a date, YYYY-MM-DD, from 2000 to 2099")
    start, end = dcol.parse_day(r.starts_on), dcol.parse_day(r.ends_on)
    v.check(not (start and end and end < start), f"{path}.ends_on", "must not be before starts_on")


def _target(v: Violations, t: pb.ColumnTarget) -> None:
    path = "column.target"
    check_id(v, f"{path}.group_id", t.group_id)
    check_id(v, f"{path}.store_id", t.store_id)
    val.text(v, f"{path}.city", t.city, 100)
    if t.group_id:
        v.check(not (t.kind or t.store_id or t.city), path,
                "either a group, or a kind (with an optional store and city)")
    else:
        v.check(t.kind in val.KINDS, f"{path}.kind", "a group or a GroupKind is required")


CHECKS = {
    "title": lambda v, c: val.text(v, "column.title", c.title, dcol.MAX_TITLE, required=True),
    "content": lambda v, c: _content(v, c.content),
    "recurrence": lambda v, c: _recurrence(v, c.recurrence),
    "target": lambda v, c: _target(v, c.target),
}


# -- protos <-> documents --
def column_fields(c: pb.Column) -> Doc:
    r, t = c.recurrence, c.target
    return {
        "title": c.title,
        "content": {"text": c.content.text, "media_url": c.content.media_url,
                    "link_url": c.content.link_url},
        "recurrence": {
            "cadence": CADENCES[r.cadence].value if r.cadence in CADENCES else "",
            "at": r.at_time, "weekdays": sorted({d - 1 for d in r.weekdays}),
            "once_at": micros_of(r.once_time) if r.HasField("once_time") else 0,
            "starts_on": r.starts_on, "ends_on": r.ends_on},
        "target": {"group_id": t.group_id, "kind": t.kind, "store_id": t.store_id,
                   "city": t.city},
    }


def content_pb(d: Doc) -> pb.ColumnContent:
    return pb.ColumnContent(**d)


def column_pb(d: Doc) -> pb.Column:
    r = d["recurrence"]
    return pb.Column(
        id=d["_id"], title=d["title"], content=content_pb(d["content"]),
        recurrence=pb.ColumnRecurrence(
            cadence=CADENCE_PB[r["cadence"]], at_time=r["at"],
            weekdays=[w + 1 for w in r["weekdays"]], once_time=ts(r["once_at"]),
            starts_on=r["starts_on"], ends_on=r["ends_on"]),
        target=pb.ColumnTarget(**d["target"]), state=COLUMN_STATES[d["state"]],
        next_post_time=ts(d["next_at"]), last_post_time=ts(d["last_post_at"]),
        post_count=d["post_count"], create_time=ts(d["create_time"]),
        update_time=ts(d["update_time"]),
    )


def post_pb(d: Doc) -> pb.ColumnPost:
    return pb.ColumnPost(column_id=d["column_id"], group_id=d["group_id"], chat_id=d["chat_id"],
                         occurrence_time=ts(d["occurrence"]), post_time=ts(d["post_time"]),
                         content=content_pb(d["content"]), key=d["_id"])


class ColumnsApi:
    """CreateColumn .. ListColumnPosts (CommunityServicer inherits them)."""

    columns: Columns

    async def CreateColumn(self, request: pb.CreateColumnRequest, context) -> pb.Column:
        v = Violations(DOMAIN)
        val.client_id(v, "column_id", request.column_id)
        for check in CHECKS.values():
            check(v, request.column)
        r = request.column.recurrence
        if r.cadence == pb.COLUMN_CADENCE_ONCE and r.HasField("once_time"):
            v.check(micros_of(r.once_time) > self.columns.w.now_micros(),
                    "column.recurrence.once_time", "must be in the future")
        v.raise_if_any()
        return column_pb(await self.columns.create(request.column_id,
                                                   column_fields(request.column)))

    async def GetColumn(self, request: pb.GetColumnRequest, context) -> pb.Column:
        v = Violations(DOMAIN)
        check_id(v, "column_id", request.column_id, required=True)
        v.raise_if_any()
        return column_pb(await self.columns.get(request.column_id))

    async def ListColumns(self, request: pb.ListColumnsRequest,
                          context) -> pb.ListColumnsResponse:
        v = Violations(DOMAIN)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        items = await self.columns.list_columns(COLUMN_STATE_NAMES.get(request.state, ""),
                                                page.get("a", ""), page.fetch)
        items, token = page.finish(items, lambda d: {"a": d["_id"]})
        return pb.ListColumnsResponse(columns=[column_pb(d) for d in items],
                                      next_page_token=token)

    async def UpdateColumn(self, request: pb.UpdateColumnRequest, context) -> pb.Column:
        v = Violations(DOMAIN)
        check_id(v, "column_id", request.column_id, required=True)
        paths = val.mask(v, list(request.update_mask.paths), COLUMN_PATHS)
        for name in paths:
            CHECKS[name](v, request.column)
        v.raise_if_any()
        fields = column_fields(request.column)
        return column_pb(await self.columns.update(request.column_id,
                                                   {p: fields[p] for p in paths}))

    async def ArchiveColumn(self, request: pb.ArchiveColumnRequest, context) -> pb.Column:
        v = Violations(DOMAIN)
        check_id(v, "column_id", request.column_id, required=True)
        v.raise_if_any()
        return column_pb(await self.columns.archive(request.column_id))

    async def ListColumnPosts(self, request: pb.ListColumnPostsRequest,
                              context) -> pb.ListColumnPostsResponse:
        v = Violations(DOMAIN)
        check_id(v, "column_id", request.column_id, required=True)
        check_id(v, "group_id", request.group_id)
        page = paging.begin(request, v, {"a": str})
        v.raise_if_any()
        items = await self.columns.posts(request.column_id, request.group_id,
                                         page.get("a", ""), page.fetch)
        items, token = page.finish(items, lambda d: {"a": d["_id"]})
        return pb.ListColumnPostsResponse(posts=[post_pb(d) for d in items],
                                          next_page_token=token)
