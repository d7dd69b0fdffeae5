"""The import-linter contracts (make lint) cover a service nobody has listed: a new
service, here `services.campaign` in a scratch tree, that breaks each wall is caught
by the project's own contracts, unedited."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# A scratch tree: the runtime, one tidy service (member) and a new one (campaign).
TIDY = {
    "services/__init__.py": "",
    "services/runtime/__init__.py": "",
    "services/runtime/errors.py": "class PondError(Exception): ...\n",
    "services/runtime/server.py": "import grpc\n",
    "services/runtime/documents.py": "",
    "services/member/__init__.py": "",
    "services/member/domain/__init__.py": "",
    "services/member/domain/rules.py": "from services.runtime.errors import PondError\n",
    "services/member/store.py": "",
    "services/member/service.py": "from services.member import store\n",
    "services/member/api.py": "import grpc\nfrom services.member import service\n",
    "services/member/server.py": "import grpc\nfrom services.member import api\n",
    "services/campaign/__init__.py": "",
    "services/campaign/domain/__init__.py": "",
    "services/campaign/domain/journeys.py": "from services.runtime.errors import PondError\n",
    "services/campaign/store.py": "",
    "services/campaign/api.py": "import grpc\nfrom services.campaign import journeys\n",
    "services/campaign/journeys.py": "from services.campaign import store\n",
    "services/campaign/audience.py": "from services.runtime.errors import PondError\n",
    "stack/__init__.py": "",
    "gateway/__init__.py": "",
    "gateway/app.py": "from services.runtime.errors import PondError\n",
}
# Each wall, broken by the new service: file, what it adds, the import reported.
BREACHES = {
    "domain imports a store": ("services/campaign/domain/journeys.py",
                               "from services.campaign import store\n",
                               "services.campaign.domain.journeys -> services.campaign.store"),
    "domain imports grpc": ("services/campaign/domain/journeys.py", "import grpc\n",
                            "services.campaign.domain.journeys -> grpc"),
    "domain imports a driver": ("services/campaign/domain/journeys.py", "import redis\n",
                                "services.campaign.domain.journeys -> redis"),
    "api imports the store": ("services/campaign/api.py", "from services.campaign import store\n",
                              "services.campaign.api -> services.campaign.store"),
    "a use case imports grpc": ("services/campaign/journeys.py", "import grpc\n",
                                "services.campaign.journeys -> grpc"),
    "a service imports another": ("services/campaign/audience.py",
                                  "from services.member import service\n",
                                  "services.campaign.audience -> services.member.service"),
    "the runtime imports a service": ("services/runtime/errors.py",
                                      "from services.campaign import journeys\n",
                                      "services.runtime.errors -> services.campaign.journeys"),
    "a service imports the stack": ("services/campaign/store.py", "import stack\n",
                                    "services.campaign.store -> stack"),
    "the gateway imports a service": ("gateway/app.py", "from services.campaign import store\n",
                                      "gateway.app -> services.campaign.store"),
    "a service imports the gateway": ("services/campaign/audience.py", "import gateway.app\n",
                                      "services.campaign.audience -> gateway.app"),
}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = [f"[tool.importlinter]\nroot_packages = {config['root_packages']!r}\n"
             "include_external_packages = true\n"]
    for contract in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {_toml(value)}" for key, value in contract.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(tree)})


def test_a_tidy_new_service_passes(tmp_path: Path) -> None:
    result = _lint(_tree(tmp_path, TIDY))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_wall_covers_a_new_service(tmp_path: Path) -> None:
    files = dict(TIDY)
    for path, text, _ in BREACHES.values():
        files[path] += text
    result = _lint(_tree(tmp_path, files))
    assert result.returncode == 1, result.stdout + result.stderr
    missed = [breach for breach, (_, _, reported) in BREACHES.items()
              if reported not in result.stdout]
    assert not missed, result.stdout
