"""Since when each member has each computed (rule or score) tag, to the day.

Per tag, cohorts: day -> the members who gained the tag that day and have it still.
A gain adds the members to the cohort of the day; a loss takes them out of the
tag's cohorts; so a tag's cohorts never overlap and hold only its members, and
their memory is at most that of the tag's bitmap. Whole days, because a member
may gain a tag in any second of the day and a cohort per second would never end;
a day is what a guide reads in the profile. Days are the engine's (days since
1970-01-01 in the brand's time zone).

Persisted as bitmaps of kind "since" named "<tag>@<day>" (the day follows the last
"@": a category, in a repurchase_due tag, may contain one); only the cohorts a
change touched are rewritten, emptied ones deleted."""

from __future__ import annotations

from pyroaring import BitMap

KIND = "since"


class TagSince:
    def __init__(self) -> None:
        self.cohorts: dict[str, dict[int, BitMap]] = {}
        self._dirty: set[tuple[str, int]] = set()

    @classmethod
    def from_blobs(cls, blobs: dict[str, bytes]) -> TagSince:
        since = cls()
        for name, blob in blobs.items():
            tag, _, day = name.rpartition("@")
            since.cohorts.setdefault(tag, {})[int(day)] = BitMap.deserialize(blob)
        return since

    def gained(self, tag: str, members: BitMap, day: int) -> None:
        if members:
            cohort = self.cohorts.setdefault(tag, {}).setdefault(day, BitMap())
            cohort |= members
            self._dirty.add((tag, day))

    def lost(self, tag: str, members: BitMap) -> None:
        if not members:
            return
        for day, cohort in self.cohorts.get(tag, {}).items():
            if cohort.intersect(members):
                cohort -= members
                self._dirty.add((tag, day))

    def day_of(self, tag: str, idx: int) -> int | None:
        """The day the member gained the tag (None: not known, e.g. gained before
        this was recorded)."""
        for day, cohort in self.cohorts.get(tag, {}).items():
            if idx in cohort:
                return day
        return None

    def take_changes(self) -> tuple[dict[str, bytes], list[str]]:
        """Cohorts changed since the last call: (name -> blob to write, names to
        delete); emptied cohorts leave memory too."""
        put: dict[str, bytes] = {}
        delete: list[str] = []
        for tag, day in sorted(self._dirty):
            days = self.cohorts.get(tag, {})
            cohort = days.get(day)
            name = f"{tag}@{day}"
            if cohort:
                put[name] = cohort.serialize()
            else:
                delete.append(name)
                days.pop(day, None)
        self._dirty = set()
        return put, delete
