"""Every reason the services can raise is UPPER_SNAKE (AIP-193), and errors are plain
Python: no module outside api.py, server.py and the runtime needs grpc to raise or
handle one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.runtime import errors
from services.runtime.errors import (
    Conflict,
    ErrorKind,
    FailedPrecondition,
    NotFound,
    PondError,
    not_found,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"
# Calls whose first argument (or `reason=`) is an error reason.
REASON_CALLS = {
    "failed_precondition", "already_exists", "conflict", "invalid_argument", "RuleViolation",
    "IdentityConflict", *(cls.__name__ for cls in errors.KINDS.values()),
}


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def raised_reasons() -> dict[str, str]:
    """reason -> where, for every reason written in services/ as a literal: the
    reason argument of the error helpers and kinds, domain rule violations, and the
    reasons not_found builds from what it is told is missing."""
    found: dict[str, str] = {}
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(SERVICES.parent)}:{node.lineno}"
            name = _name(node)
            keyword = next((k.value for k in node.keywords if k.arg == "reason"), None)
            first = node.args[0] if node.args else None
            if name == "not_found" and _literal(first) is not None:
                found[not_found(_literal(first) or "", "x").reason] = where
            elif name in REASON_CALLS:
                positional = None if name == "invalid_argument" else _literal(first)
                reason = _literal(keyword) or positional
                if reason is not None:
                    found[reason] = where
            elif name == "replace" and _literal(keyword) is not None:
                found[_literal(keyword) or ""] = where
    return found


def test_every_reason_the_services_raise_is_upper_snake() -> None:
    reasons = raised_reasons()
    # The scan sees the reasons (not an empty pass): some of every source.
    assert {"INSUFFICIENT_POINTS", "CONCURRENT_UPDATE", "IDEMPOTENCY_KEY_REUSED",
            "MEMBER_NOT_KNOWN_YET", "RUN_IN_PROGRESS", "ORDER_NOT_FOUND",
            "STORED_VALUE_PAYMENT_NOT_FOUND", "IDENTITY_TAKEN"} <= set(reasons)
    bad = {r: where for r, where in reasons.items() if not errors.REASON_RE.fullmatch(r)}
    assert not bad


def test_not_found_makes_a_reason_of_words() -> None:
    err = not_found("stored value entry", "sv-1", domain="pond.member")
    assert isinstance(err, NotFound) and err.kind is ErrorKind.NOT_FOUND
    assert err.reason == "STORED_VALUE_ENTRY_NOT_FOUND"
    assert err.metadata == {"id": "sv-1"}


@pytest.mark.parametrize("reason", ["POINTS ENTRY_NOT_FOUND", "lower_case", "TRAILING_",
                                    "_LEADING", "DOUBLE__UNDERSCORE", "", "X" * 64, "1ST"])
def test_a_malformed_reason_is_refused_when_the_error_is_made(reason: str) -> None:
    with pytest.raises(ValueError):
        FailedPrecondition(reason, "message")


def test_kinds_are_plain_exceptions() -> None:
    err = Conflict("CONCURRENT_UPDATE", "retry", "pond.member")
    assert isinstance(err, PondError) and isinstance(err, Exception)
    assert str(err) == "ABORTED CONCURRENT_UPDATE: retry"
    with pytest.raises(TypeError):
        PondError("SOME_REASON", "which kind?")


def test_no_service_module_outside_api_and_server_imports_grpc() -> None:
    """import-linter keeps this too (make lint); here it runs with the tests."""
    importers = []
    for path in sorted(SERVICES.rglob("*.py")):
        rel = path.relative_to(SERVICES)
        if rel.parts[0] == "runtime" or path.name in ("api.py", "server.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            if any(n == "grpc" or n.startswith(("grpc.", "grpc_")) for n in names):
                importers.append(str(rel))
    assert importers == []
