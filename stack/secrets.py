"""Dev-stack secrets: made randomly once and kept under the data directory, so data
(encrypted phone numbers) and printed tokens survive a restart."""

from __future__ import annotations

import base64
import os
from pathlib import Path


def dev_secret(data_dir: Path, name: str, nbytes: int = 32) -> str:
    path = data_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(nbytes)).decode())
    return path.read_text().strip()
