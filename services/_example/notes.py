"""The example's use cases: load, apply the rules, commit one unit of work (state,
event, timer together). Event and timer handlers add their writes to the unit of work
the runtime gives them; the runtime commits it with the event's mark or the timer's
firing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from datetime import timedelta

from services._example.domain.notes import new_note_problems, note_doc
from services._example.events import PRODUCER, NoteAdded
from services._example.store import COUNTERS, NOTES
from services.runtime.clock import Clock, epoch_micros
from services.runtime.documents import (
    Conflict,
    Doc,
    DocumentStore,
    DuplicateKey,
    Timer,
    UnitOfWork,
)
from services.runtime.errors import already_exists, invalid_argument, not_found
from services.runtime.eventbus import make_event
from services.runtime.events import Received
from services.runtime.logs import current_request_id, get_logger

DOMAIN = "pond.example"
REMIND = "remind"  # the timer kind
log = get_logger("pond.example")


class Notes:
    def __init__(
        self, store: DocumentStore, clock: Clock, *, replica: str = "", timer_delay: float = 0.0
    ) -> None:
        self.store, self.clock = store, clock
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self.timer_delay = timer_delay
        self.reminder_attempts: Counter[str] = Counter()

    async def add(
        self, note_id: str, text: str, remind_in: float, failing_reminders: int, delay: float
    ) -> Doc:
        problems = new_note_problems(note_id, text, remind_in)
        if problems:
            raise invalid_argument(problems, domain=DOMAIN)
        if delay:
            log.info("adding a note slowly", note_id=note_id, seconds=delay)
            await asyncio.sleep(delay)
        now = self.clock.now()
        doc = note_doc(note_id, text, failing_reminders)
        uow = UnitOfWork()
        uow.insert(NOTES.name, doc)
        uow.emit(make_event(PRODUCER, note_id, NoteAdded(note_id=note_id), now).SerializeToString())
        if remind_in > 0:
            due = epoch_micros(now + timedelta(seconds=remind_in))
            uow.set_timer(Timer(f"remind:{note_id}", REMIND, due, {"note_id": note_id}))
        try:
            await self.store.commit(uow)
        except DuplicateKey as exc:
            raise already_exists(
                "NOTE_EXISTS", f"note {note_id!r} exists", domain=DOMAIN, note_id=note_id
            ) from exc
        return doc

    async def get(self, note_id: str) -> Doc:
        doc = await self.store.get(NOTES.name, note_id)
        if doc is None:
            raise not_found("note", note_id, domain=DOMAIN)
        return doc

    async def job_runs(self) -> int:
        doc = await self.store.get(COUNTERS.name, "jobs")
        return int(doc["runs"]) if doc else 0

    # -- events, timers, jobs --
    async def on_note_added(self, event: Received[NoteAdded], uow: UnitOfWork) -> None:
        doc = await self.store.get(NOTES.name, event.payload.note_id)
        if doc is None:  # not there (yet): redelivered, dead-lettered after a few tries
            raise LookupError(f"no note {event.payload.note_id!r}")
        doc["seen"] += 1
        doc["seen_request_id"] = current_request_id()  # the envelope's, bound by the runtime
        uow.replace(NOTES.name, doc)

    async def on_remind(self, timer: Timer, uow: UnitOfWork) -> None:
        note_id = timer.payload["note_id"]
        self.reminder_attempts[note_id] += 1
        if self.timer_delay:
            await asyncio.sleep(self.timer_delay)
        doc = await self.store.get(NOTES.name, note_id)
        if doc is None:
            return
        if self.reminder_attempts[note_id] <= doc["failing_reminders"]:
            raise RuntimeError(f"reminder of {note_id} fails on purpose")
        doc["reminders"] += 1
        doc["reminded_by"] = self.replica
        uow.replace(NOTES.name, doc)

    async def tally(self) -> int:
        """The scheduled job: counts its own runs (a guarded increment)."""
        while True:
            doc = await self.store.get(COUNTERS.name, "jobs")
            uow = UnitOfWork()
            if doc is None:
                uow.insert(COUNTERS.name, {"_id": "jobs", "runs": 1})
            else:
                doc["runs"] += 1
                uow.replace(COUNTERS.name, doc)
            try:
                await self.store.commit(uow)
            except (Conflict, DuplicateKey):
                continue
            return 1 if doc is None else int(doc["runs"])
