"""A broken business rule: the api layer turns it into FAILED_PRECONDITION."""

from __future__ import annotations


class RuleViolation(Exception):
    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata
