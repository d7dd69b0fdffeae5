"""Channel adapters: what carries the community service's outbound actions to the
groups. A due column post is an outbox event (ColumnPostDue on the community
stream); an adapter consumes it and posts it. The dev adapter logs the post; the
WeCom adapter (not reachable from here) implements the same protocol with WeCom's
customer-group message API (see the README, Community: column schedules).

The consumer applies each event once (the runtime's processed marks, consumer group
"community-channel"); an adapter that raises leaves the event for redelivery, and
after POND_EVENT_MAX_DELIVERIES it is dead-lettered (replayable)."""

from __future__ import annotations

from typing import Protocol

import structlog

from services.community.events import STREAM, ColumnPostDue
from services.runtime.clock import Clock
from services.runtime.documents import DocumentStore, UnitOfWork
from services.runtime.events import EventHandlers, Received
from services.runtime.host import Consumer

log = structlog.get_logger("pond.community.channel")
CHANNEL_CONSUMER = "community-channel"
PREVIEW_CHARS = 80


class ChannelAdapter(Protocol):
    async def post(self, post: ColumnPostDue) -> None:
        """Deliver the post to its group (post.chat_id); raise to be retried.
        Called at least once per post: use post.key as the delivery's idempotency key."""


class LoggingChannel:
    """The dev adapter: one log line per post."""

    async def post(self, post: ColumnPostDue) -> None:
        log.info("column post", column_id=post.column_id, group_id=post.group_id,
                 chat_id=post.chat_id or "(no WeCom chat yet)", key=post.key,
                 title=post.title, text=post.text[:PREVIEW_CHARS],
                 media_url=post.media_url, link_url=post.link_url)


def channel_consumer(adapter: ChannelAdapter, store: DocumentStore, clock: Clock) -> Consumer:
    async def on_post(event: Received[ColumnPostDue], uow: UnitOfWork) -> None:
        await adapter.post(event.payload)

    # In the service's consumer group on its stream (the host merges it with the
    # others there); its processed marks are its own.
    handlers = EventHandlers(CHANNEL_CONSUMER, store, clock).on(ColumnPostDue, on_post)
    return Consumer(STREAM, handlers)
