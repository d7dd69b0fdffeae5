"""The example's collections, declared once for the runtime's document store (SQLite
embedded, MongoDB in production). No SQL, no motor."""

from __future__ import annotations

from services.runtime.documents import Collection, Schema

NOTES = Collection("notes")
COUNTERS = Collection("counters")
SCHEMA = Schema("example", (NOTES, COUNTERS))
