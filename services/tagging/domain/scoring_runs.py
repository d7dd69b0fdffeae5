"""A scoring run's record: what the run use case (services.tagging.runs) keeps in the
store and the servicer shows. Times are epoch microseconds."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


@dataclass(slots=True)
class Run:
    id: str
    state: str = RUNNING
    segment_id: str = ""  # only this segment's members, if set
    partition: int = 0
    partitions: int = 1
    stage: str = "load"  # load, score, write, done
    members_total: int = 0
    members_scored: int = 0
    tags_gained: int = 0
    tags_lost: int = 0
    events_published: int = 0
    duration_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    start_time: int = 0
    end_time: int = 0
    # Partitions share statistics per attempt: a resumed run never merges what a
    # partition computed in an earlier, failed attempt.
    attempt: int = 0
    # The stored record's version as read: the store writes it back only over that
    # version (a cancel from another replica in between wins).
    revision: int = 0

    @property
    def running(self) -> bool:
        return self.state == RUNNING
