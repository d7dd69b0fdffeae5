"""A broken business rule: the use cases turn it into FAILED_PRECONDITION."""

from __future__ import annotations

from services.runtime.rules import RuleViolation

__all__ = ["RuleViolation"]
