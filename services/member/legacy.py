"""The one-time copy of a member.db written before the document store (tables
members, identities, lots, points_entries, sv_entries, orders, tier_changes,
settings, idempotency, outbox, each row's document in a `doc` column) into the
document store's layout, at open (services.runtime.legacy_sqlite does the file work).

Everything is copied but the idempotency records: they held result ids, not first
responses, so a replay of a call made before the upgrade runs again (orders and
their refunds are still recognised by their own ids). The birthday gifts' marks
(given this year) are kept. Unpublished events are copied
last; a copy interrupted by a crash runs again at the next open (documents are put
by key; an event may go out twice, which consumers dedupe by event id)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import structlog

from services.runtime import legacy_sqlite
from services.runtime.documents import (
    IDEMPOTENCY,
    DocumentStore,
    DuplicateKey,
    IdempotencyRecord,
    UnitOfWork,
)

log = structlog.get_logger("pond.member")


def set_aside_if_legacy(path: str) -> Path | None:
    """The old file set aside, if `path` is one (or one is pending from before)."""
    if legacy_sqlite.has_table(path, "identities", "lookup"):
        return legacy_sqlite.set_aside(path)
    aside = legacy_sqlite.pending(path)
    return aside if aside.exists() else None


def _member(doc: dict) -> dict:
    doc.pop("version", None)  # the store's `_v` now
    doc["birthday_md"] = doc["birthday"][4:]
    return doc


async def copy_legacy(docs: DocumentStore, aside: Path) -> None:
    """Copies the old file's rows into `docs`, then retires the old file."""
    copied = 0
    # old table (the collection of the same name), its columns, a row -> a document
    tables = (
        ("members", "doc", lambda row: _member(orjson.loads(row[0]))),
        ("lots", "doc", lambda row: orjson.loads(row[0])),
        ("points_entries", "doc", lambda row: orjson.loads(row[0])),
        ("sv_entries", "doc", lambda row: orjson.loads(row[0])),
        ("orders", "doc", lambda row: orjson.loads(row[0])),
        ("settings", "doc", lambda row: orjson.loads(row[0])),
        ("identities", "lookup, member_id", lambda row: {"_id": row[0], "member_id": row[1]}),
        ("tier_changes", "seq, doc", lambda row: {"_id": row[0], **orjson.loads(row[1])}),
    )
    top_seq = 0
    for table, columns, to_doc in tables:
        for batch in legacy_sqlite.rows(aside, table, columns):
            uow = UnitOfWork()
            batch_docs = [to_doc(row) for row in batch]
            uow.put_many(table, batch_docs)
            await docs.commit(uow)
            copied += len(batch_docs)
            if table == "tier_changes":
                top_seq = max(top_seq, *(d["_id"] for d in batch_docs))
    if top_seq:
        # New tier changes are numbered after the copied ones.
        await docs.next_ids("tier_changes", top_seq)
    year = 366 * 86_400 * 1_000_000
    for batch in legacy_sqlite.rows(aside, "idempotency", "scope, key, fingerprint"):
        for scope, key, fingerprint in batch:
            if scope != "GrantBirthdayGifts":
                continue
            uow = UnitOfWork()
            expires = time.time_ns() // 1000 + year
            uow.remember(IdempotencyRecord(scope, key, fingerprint, b"", expires))
            try:
                await docs.commit(uow)
            except DuplicateKey as exc:  # copied before an interrupted copy
                if exc.collection != IDEMPOTENCY:
                    raise
    for batch in legacy_sqlite.rows(aside, "outbox", "event"):
        uow = UnitOfWork()
        uow.emit(*(bytes(row[0]) for row in batch))
        await docs.commit(uow)
        copied += len(batch)
    done = legacy_sqlite.retire(aside)
    log.warning("copied a member.db from before the document store", documents=copied,
                kept_as=str(done))
