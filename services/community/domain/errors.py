"""A community rule said no: the use cases turn it into FAILED_PRECONDITION with its
reason (UPPER_SNAKE) and message."""

from __future__ import annotations

from services.runtime.rules import RuleViolation

__all__ = ["RuleViolation"]
