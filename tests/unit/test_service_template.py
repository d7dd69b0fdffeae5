"""Adding a service touches no runtime code and no contract list: the example
service (services/_example, the template in services/README.md) runs on the host
(tests/integration/test_host.py) while nothing outside it names it, and its
server.py declares parts only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nothing_shared_names_the_example_service():
    shared = [*(ROOT / "services" / "runtime").glob("*.py"), ROOT / "pyproject.toml",
              *(ROOT / "stack").glob("*.py")]
    named = [p.name for p in shared if "_example" in p.read_text()]
    assert named == []


def test_the_example_server_declares_parts_and_nothing_else():
    tree = ast.parse((ROOT / "services" / "_example" / "server.py").read_text())
    top = [type(node).__name__ for node in tree.body if not isinstance(node, ast.Expr)]
    # Imports, one async build(ctx) and the SPEC: no tasks started, no server built,
    # no signal handled.
    assert set(top) <= {"ImportFrom", "Import", "Assign", "AsyncFunctionDef"}
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree) if isinstance(node, ast.Call)
    }
    assert not calls & {"create_task", "ensure_future", "start", "add_signal_handler",
                        "PondServer", "OutboxRelay", "EventConsumer", "connect_redis"}
