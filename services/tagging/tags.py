"""Use cases of the tag catalogue (versioned rule tags), manual tags and category
repurchase cycles."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyroaring import BitMap

from services.runtime.clock import epoch_micros
from services.runtime.errors import (
    already_exists,
    invalid_argument,
    not_found,
)
from services.tagging import catalogue as cat
from services.tagging.catalogue import DOMAIN
from services.tagging.engine import Definition, TagChangeSet
from services.tagging.service import (
    MAX_BATCH_MEMBERS,
    MAX_BATCH_TAGS,
    MAX_REPORTED_UNKNOWN,
    TaggingCore,
)
from services.tagging.store import AlreadyExists, ManualTag


class CatalogueUseCases(TaggingCore):
    if TYPE_CHECKING:  # MemberUseCases', beside this in TaggingApp

        async def _rescore_indexes(self, indexes: list[int]) -> None: ...

    # -- catalogue --
    def tag(self, name: str) -> Definition:
        d = self.engine.tags.get(name)
        if d is None:
            raise not_found("tag", name, domain=DOMAIN)
        return d

    def tag_count(self, name: str) -> int:
        return len(self.engine.tag_bitmaps.get(name, ()))

    async def create_tag(
        self, name: str, kind: str, group: str, display_name: str, description: str, expression: str
    ) -> Definition:
        problems = cat.check_key("tag.name", name)
        if kind not in ("manual", "rule"):
            problems.append(("tag.kind", "create MANUAL or RULE tags; SCORE tags are built in"))
        if kind == "manual" and expression:
            problems.append(("tag.expression", "manual tags have no expression"))
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        expr = None
        if kind == "rule":
            expr = cat.check_expression("tag.expression", expression)
            cat.check_references(
                "tag.expression",
                expr,
                tags=self.engine.tags,
                segments=self.engine.segments,
                self_key=name,
                self_kind="tag",
            )
        now = epoch_micros(self.now())
        doc = {
            "name": name,
            "kind": kind,
            "group": group,
            "display_name": display_name or name,
            "description": description,
            "expression": expression if expr else "",
            "version": 1,
            "create_time": now,
            "update_time": now,
        }
        async with self.engine.lock:
            try:
                await self.store.put_definition("tag", name, doc, create=True)
            except AlreadyExists as exc:
                raise already_exists("TAG_EXISTS", f"tag {name!r} exists", domain=DOMAIN) from exc
            if expr is not None:
                await self.store.add_version("tag", name, 1, _version_doc(doc))
            self.engine.tags[name] = Definition(doc, expr)
        if expr is not None:
            self._on_rules_changed()
        return self.engine.tags[name]

    async def update_tag(self, name: str, values: dict) -> Definition:
        d = self.tag(name)
        if "expression" in values:
            if d.doc["kind"] != "rule":
                raise invalid_argument(
                    [("tag.expression", "only rule tags have expressions")], domain=DOMAIN
                )
            expr = cat.check_expression("tag.expression", values["expression"])
            cat.check_references(
                "tag.expression",
                expr,
                tags=self.engine.tags,
                segments=self.engine.segments,
                self_key=name,
                self_kind="tag",
            )
        async with self.engine.lock:
            doc = dict(d.doc, **values, update_time=epoch_micros(self.now()))
            new_rule = "expression" in values and values["expression"] != d.doc["expression"]
            if new_rule:
                doc["version"] = d.doc["version"] + 1
                await self.store.add_version("tag", name, doc["version"], _version_doc(doc))
            await self.store.put_definition("tag", name, doc)
            self.engine.tags[name] = cat.parse_definition(doc)
        if new_rule:
            self._on_rules_changed()
        return self.engine.tags[name]

    async def tag_versions(self, name: str) -> list[dict]:
        self.tag(name)
        return [doc for doc, _ in await self.store.list_versions("tag", name)]

    # -- manual tags --
    async def change_manual(
        self, member_ids: list[str], tag_names: list[str], by: str, assign: bool
    ) -> int:
        problems = []
        if not 1 <= len(member_ids) <= MAX_BATCH_MEMBERS:
            problems.append(("member_ids", f"1 to {MAX_BATCH_MEMBERS} members per call"))
        if not 1 <= len(tag_names) <= MAX_BATCH_TAGS:
            problems.append(("tag_names", f"1 to {MAX_BATCH_TAGS} tags per call"))
        for i, name in enumerate(tag_names):
            d = self.engine.tags.get(name)
            if d is None:
                problems.append((f"tag_names[{i}]", f"unknown tag {name!r}"))
            elif d.doc["kind"] != "manual":
                problems.append((f"tag_names[{i}]", f"{name!r} is computed, not a manual tag"))
        # A member id tagging has never seen is a typo or not a member: tagging it would
        # make a member out of nothing. (A member registered a moment ago is known as
        # soon as its MemberRegistered event arrives, within milliseconds.)
        unknown = [(i, m) for i, m in enumerate(member_ids) if m not in self.engine.index]
        for i, m in unknown[:MAX_REPORTED_UNKNOWN]:
            problems.append((f"member_ids[{i}]", f"unknown member {m!r}"))
        if len(unknown) > MAX_REPORTED_UNKNOWN:
            problems.append(("member_ids", f"{len(unknown)} unknown members in all"))
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        engine = self.engine
        async with engine.lock:
            index = engine.index
            at = epoch_micros(self.now())
            pairs = [(index[m], t) for m in dict.fromkeys(member_ids) for t in tag_names]
            todo = [p for p in pairs if (p in engine.manual_meta) != assign]
            changes = TagChangeSet()
            for idx, tag in todo:
                gained, lost = changes.tags.setdefault(tag, (BitMap(), BitMap()))
                (gained if assign else lost).add(idx)
            # Journeys react to a guide's tag as to a computed one: TagsChanged, queued
            # in the same transaction as the change.
            events = self._events(changes)
            if assign:
                adds = [ManualTag(i, t, by, at) for i, t in todo]
                changed = await self.store.set_manual_tags(adds, [], events)
            else:
                changed = await self.store.set_manual_tags([], todo, events)
            for pair in todo:
                if assign:
                    engine.manual_meta[pair] = (by, at)
                else:
                    engine.manual_meta.pop(pair, None)
            engine.apply_changes(changes)
            if events:
                self._on_commit()
        await self._rescore_indexes([i for i, _ in todo])
        return changed

    # -- categories --
    async def set_cycle(self, category: str, days: float) -> None:
        if not category or len(category) > 64:
            raise invalid_argument([("category", "1-64 characters")], domain=DOMAIN)
        if not 0 <= days <= 3650:
            raise invalid_argument([("days", "0 (clear) to 3650")], domain=DOMAIN)
        async with self.engine.lock:
            await self._categories([category], admit=True)  # past the limit too
            await self.store.set_cycle(category, days)
            self.engine.configured_cycles = await self.store.load_cycles()
        self._on_rules_changed()  # repurchase-due tags of the category move


def _version_doc(doc: dict) -> dict:
    return {
        "version": doc["version"],
        "expression": doc["expression"],
        "create_time": doc["update_time"],
    }
