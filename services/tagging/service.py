"""The tagging service's use cases over the engine, in groups that share
TaggingCore: the catalogue and manual tags (tags.py), what tagging knows of each
member (members.py), segments (segments.py); app.py composes them. No gRPC here
(api.py translates)."""

from __future__ import annotations

from datetime import datetime

import structlog

from services.runtime.eventbus import make_event
from services.tagging import catalogue as cat
from services.tagging.engine import TagChangeSet, TagEngine
from services.tagging.events import PRODUCER, tags_changed_payloads

MAX_BATCH_MEMBERS = 1000
MAX_REPORTED_UNKNOWN = 20  # unknown member ids named in one error
MAX_BATCH_TAGS = 20
MAX_LISTED_UNTRACKED = 100  # untracked categories remembered for the operator

log = structlog.get_logger("pond.tagging")


class TaggingCore:
    """What the use-case groups share: the engine and store, the clock, the
    callbacks to the outbox relay and the rescorer, categories and events."""

    def __init__(
        self,
        engine: TagEngine,
        on_commit=lambda: None,
        on_rules_changed=lambda: None,
        *,
        max_categories: int = 200,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self._on_commit = on_commit  # events are queued: wake the outbox relay
        self._on_rules_changed = on_rules_changed  # rescore everyone soon
        self.max_categories = max_categories
        self._said_untracked_full = False

    def now(self) -> datetime:
        return self.engine.clock.now()

    async def _categories(self, names: list[str], *, admit: bool = False) -> dict[str, int]:
        """Ids of the tracked categories among `names`. A new category is tracked
        (gets an id, per-category statistics and its repurchase_due tag) while fewer
        than `max_categories` are, or when an operator `admit`s it: a flood of
        made-up categories in orders cannot grow the catalogue without bound. The
        others are remembered (a sample) for ListCategoryCycles and logged."""
        engine = self.engine
        new = [n for n in dict.fromkeys(names) if n not in engine.categories]
        if new:
            room = len(new) if admit else max(0, self.max_categories - len(engine.categories))
            tracked, untracked = new[:room], new[room:]
            if tracked:
                engine.categories.update(await self.store.category_ids(tracked))
                for tag in await cat.ensure_score_tags(self.store, engine.categories, self.now()):
                    engine.tags.setdefault(tag.name, tag)
                await self._untracked([n for n in engine.untracked_categories if n not in tracked])
            if untracked:
                await self._note_untracked(untracked)
        return {n: engine.categories[n] for n in names if n in engine.categories}

    async def _note_untracked(self, names: list[str]) -> None:
        engine = self.engine
        fresh = [n for n in names if n not in engine.untracked_categories]
        room = MAX_LISTED_UNTRACKED - len(engine.untracked_categories)
        if fresh and room > 0:
            log.warning(
                "order categories past the limit are not tracked",
                categories=fresh[:room],
                limit=self.max_categories,
            )
            await self._untracked([*engine.untracked_categories, *fresh[:room]])
        elif fresh and not self._said_untracked_full:  # once per process, not per order
            self._said_untracked_full = True
            log.warning(
                "more order categories past the limit are not tracked (not listed)",
                limit=self.max_categories,
                listed=MAX_LISTED_UNTRACKED,
            )

    async def _untracked(self, names: list[str]) -> None:
        if names != self.engine.untracked_categories:
            self.engine.untracked_categories = names
            await self.store.save_untracked_categories(names)

    def _events(self, changes: TagChangeSet) -> list[bytes]:
        now = self.now()
        return [
            make_event(PRODUCER, "tags", p, now).SerializeToString()
            for p in tags_changed_payloads(changes, self.engine.ids)
        ]
