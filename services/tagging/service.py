"""The tagging service's use cases over the engine, in groups that share
TaggingCore: the catalogue and manual tags (tags.py), what tagging knows of each
member (members.py), segments (segments.py); app.py composes them. No gRPC here
(api.py translates)."""

from __future__ import annotations

from datetime import datetime

from services.runtime.eventbus import make_event
from services.tagging import catalogue as cat
from services.tagging.engine import TagChangeSet, TagEngine
from services.tagging.events import PRODUCER, tags_changed_payloads

MAX_BATCH_MEMBERS = 1000
MAX_REPORTED_UNKNOWN = 20  # unknown member ids named in one error
MAX_BATCH_TAGS = 20


class TaggingCore:
    """What the use-case groups share: the engine and store, the clock, the
    callbacks to the outbox relay and the rescorer, categories and events."""

    def __init__(
        self, engine: TagEngine, on_commit=lambda: None, on_rules_changed=lambda: None
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self._on_commit = on_commit  # events are queued: wake the outbox relay
        self._on_rules_changed = on_rules_changed  # rescore everyone soon

    def now(self) -> datetime:
        return self.engine.clock.now()

    async def _categories(self, names: list[str]) -> dict[str, int]:
        engine = self.engine
        if all(n in engine.categories for n in names):
            return {n: engine.categories[n] for n in names}
        ids = await self.store.category_ids(names)
        engine.categories.update(ids)
        await cat.ensure_score_tags(self.store, engine.categories, self.now())
        for d in await self.store.list_definitions("tag"):
            engine.tags.setdefault(d["name"], cat.parse_definition(d))
        return ids

    def _events(self, changes: TagChangeSet) -> list[bytes]:
        now = self.now()
        return [
            make_event(PRODUCER, "tags", p, now).SerializeToString()
            for p in tags_changed_payloads(changes, self.engine.ids)
        ]
