"""A community rule said no: the use cases turn it into FAILED_PRECONDITION with its
reason (UPPER_SNAKE) and message."""

from __future__ import annotations


class RuleViolation(Exception):
    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata
