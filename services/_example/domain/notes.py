"""The example's rules: what a note may be. No I/O."""

from __future__ import annotations

MAX_TEXT = 1000
MAX_REMIND_SECONDS = 366 * 86400


def new_note_problems(note_id: str, text: str, remind_in_seconds: float) -> list[tuple[str, str]]:
    """Field violations of a new note (empty when it is fine)."""
    problems = []
    if not note_id:
        problems.append(("note_id", "required"))
    if len(text) > MAX_TEXT:
        problems.append(("text", f"at most {MAX_TEXT} characters"))
    if not 0 <= remind_in_seconds <= MAX_REMIND_SECONDS:
        problems.append(("remind_in_seconds", f"0..{MAX_REMIND_SECONDS}"))
    return problems


def note_doc(note_id: str, text: str, failing_reminders: int) -> dict[str, object]:
    return {
        "_id": note_id, "text": text, "reminders": 0, "reminded_by": "", "seen": 0,
        "seen_request_id": "", "failing_reminders": failing_reminders,
    }
