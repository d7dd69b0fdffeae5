"""Dev-stack secrets: made randomly once and kept under the data directory (folder
0700, files 0600), so data (encrypted phone numbers) and tokens survive a restart."""

from __future__ import annotations

import base64
import os
from pathlib import Path


def secret_path(data_dir: Path, name: str) -> Path:
    return data_dir / "secrets" / name


def dev_secret(data_dir: Path, name: str, nbytes: int = 32) -> str:
    path = secret_path(data_dir, name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(nbytes)).decode())
    return path.read_text().strip()


def existing_dev_secret(data_dir: Path, name: str) -> str | None:
    """The secret if the stack has made it; None otherwise (never creates one)."""
    path = secret_path(data_dir, name)
    return path.read_text().strip() if path.is_file() else None


def write_private(path: Path, text: str) -> None:
    """Writes `path` as 0600, replacing it whole (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
