"""Use cases of the tag catalogue (versioned rule tags), manual tags and category
repurchase cycles."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from services.tagging.domain.definitions import MANUAL, RULE, ManualTag, TagDefinition, TagVersion
from services.tagging.engine import TagChangeSet
from services.tagging.service import (
    MAX_BATCH_MEMBERS,
    MAX_BATCH_TAGS,
    MAX_REPORTED_UNKNOWN,
    TaggingCore,
)
from services.tagging.store import AlreadyExists


@dataclass(frozen=True, slots=True)
class CategoryCycle:
    """A category's repurchase cycle in days: set by an operator (0: not set) and
    learned by the last scoring run (0: not learned)."""

    category: str
    configured_days: float
    learned_days: float


class CatalogueUseCases(TaggingCore):
    if TYPE_CHECKING:  # MemberUseCases', beside this in TaggingApp

        async def _rescore_indexes(self, indexes: list[int]) -> None: ...

    # -- catalogue --
    def tag(self, name: str) -> TagDefinition:
        d = self.engine.tags.get(name)
        if d is None:
            raise not_found("tag", name, domain=DOMAIN)
        return d

    def tag_count(self, name: str) -> int:
        return len(self.engine.tag_bitmaps.get(name, ()))

    def list_tags(
        self, after: str, limit: int, *, kind: str = "", group: str = ""
    ) -> list[TagDefinition]:
        """Up to `limit` tags named after `after`, in name order, of that kind and
        group when given."""
        chosen = []
        for name, d in sorted(self.engine.tags.items()):
            if name > after and (not kind or d.kind == kind) and (not group or d.group == group):
                chosen.append(d)
                if len(chosen) == limit:
                    break
        return chosen

    async def create_tag(
        self, name: str, kind: str, group: str, display_name: str, description: str, expression: str
    ) -> TagDefinition:
        problems = cat.check_key("tag.name", name)
        if kind not in (MANUAL, RULE):
            problems.append(("tag.kind", "create MANUAL or RULE tags; SCORE tags are built in"))
        if kind == MANUAL and expression:
            problems.append(("tag.expression", "manual tags have no expression"))
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        expr = None
        if kind == RULE:
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
        tag = TagDefinition(
            name,
            kind,
            group,
            display_name or name,
            description,
            expression if expr else "",
            version=1,
            create_time=now,
            update_time=now,
            expr=expr,
        )
        async with self.engine.lock:
            try:
                await self.store.put_tag(tag, create=True)
            except AlreadyExists as exc:
                raise already_exists("TAG_EXISTS", f"tag {name!r} exists", domain=DOMAIN) from exc
            if expr is not None:
                await self.store.add_tag_version(name, _version_of(tag))
            self.engine.tags[name] = tag
        if expr is not None:
            self._on_rules_changed()
        return tag

    async def update_tag(
        self,
        name: str,
        *,
        display_name: str | None = None,
        group: str | None = None,
        description: str | None = None,
        expression: str | None = None,
    ) -> TagDefinition:
        """Changes the fields given; a new expression is a new version."""
        d = self.tag(name)
        expr = d.expr
        if expression is not None:
            if d.kind != RULE:
                raise invalid_argument(
                    [("tag.expression", "only rule tags have expressions")], domain=DOMAIN
                )
            expr = cat.check_expression("tag.expression", expression)
            cat.check_references(
                "tag.expression",
                expr,
                tags=self.engine.tags,
                segments=self.engine.segments,
                self_key=name,
                self_kind="tag",
            )
        async with self.engine.lock:
            new_rule = expression is not None and expression != d.expression
            tag = replace(
                d,
                display_name=d.display_name if display_name is None else display_name,
                group=d.group if group is None else group,
                description=d.description if description is None else description,
                expression=d.expression if expression is None else expression,
                version=d.version + 1 if new_rule else d.version,
                update_time=epoch_micros(self.now()),
                expr=expr,
            )
            if new_rule:
                await self.store.add_tag_version(name, _version_of(tag))
            await self.store.put_tag(tag)
            self.engine.tags[name] = tag
        if new_rule:
            self._on_rules_changed()
        return tag

    async def tag_versions(self, name: str) -> list[TagVersion]:
        """Newest first."""
        self.tag(name)
        return await self.store.tag_versions(name)

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
            elif d.kind != MANUAL:
                problems.append((f"tag_names[{i}]", f"{name!r} is computed, not a manual tag"))
        # A member id tagging has never seen is a typo or not a member: tagging it would
        # make a member out of nothing. (A member registered a moment ago is known as
        # soon as its MemberRegistered event arrives, within milliseconds.)
        # A merged member is no member any more: its tags are its survivor's.
        merged = self.engine.merged
        unknown = [
            (i, m) for i, m in enumerate(member_ids) if m not in self.engine.index or m in merged
        ]
        for i, m in unknown[:MAX_REPORTED_UNKNOWN]:
            problems.append(
                (f"member_ids[{i}]", f"member {m!r} was merged into {merged[m]!r}")
                if m in merged
                else (f"member_ids[{i}]", f"unknown member {m!r}")
            )
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

    def category_cycle(self, category: str) -> CategoryCycle:
        engine = self.engine
        cat_id = engine.categories.get(category, -1)
        return CategoryCycle(
            category,
            engine.configured_cycles.get(category, 0.0),
            engine.learned_cycles.get(cat_id, 0.0),
        )

    def category_cycles(self) -> tuple[list[CategoryCycle], list[str]]:
        """Every tracked category's cycle, by name, and a sample of the untracked."""
        cycles = [self.category_cycle(c) for c in sorted(self.engine.categories)]
        return cycles, list(self.engine.untracked_categories)


def _version_of(tag: TagDefinition) -> TagVersion:
    return TagVersion(tag.version, tag.expression, tag.update_time)
