"""A broken business rule, as a service's domain code says it: plain data, no I/O
and no status codes. The use cases turn it into FAILED_PRECONDITION with its reason
(`errors.broken_rule`)."""

from __future__ import annotations


class RuleViolation(Exception):
    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason  # UPPER_SNAKE, checked when it becomes an error
        self.message = message
        self.metadata = metadata
