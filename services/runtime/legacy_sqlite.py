"""SQLite data files written before the document store (a service's own tables), read
once so the service can copy them into the document store's layout at open.

Opening such a file as a document store fails (its tables have other columns), so the
service sets it aside first (`set_aside`: the file, with its WAL folded in, renamed to
`<name>.pre-documents`), opens the new store at the old path, copies the rows
(`rows`) and then marks the old file done (`retire`, kept as `<name>.migrated`).
A crash in between repeats the copy at the next open; the copy must be idempotent
(puts by key)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PENDING = ".pre-documents"
DONE = ".migrated"


def has_table(path: str | Path, table: str, column: str) -> bool:
    """Whether the SQLite file at `path` has `table` with `column` (the old layout)."""
    if not Path(path).is_file():
        return False
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
    finally:
        conn.close()
    return column in columns


def set_aside(path: str | Path) -> Path:
    """Folds the WAL into the file and renames it to `<path>.pre-documents`."""
    path = Path(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")  # no -wal file left behind
    finally:
        conn.close()
    aside = pending(path)
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return aside


def pending(path: str | Path) -> Path:
    return Path(f"{path}{PENDING}")


def rows(
    path: str | Path, table: str, columns: str, batch: int = 1000
) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows (the named columns, in rowid order), in batches; none if the
    table is missing."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        if found is None:
            return
        cur = conn.execute(f'SELECT {columns} FROM "{table}" ORDER BY rowid')
        while chunk := cur.fetchmany(batch):
            yield chunk
    finally:
        conn.close()


def retire(aside: Path) -> Path:
    """Marks a copied file done, keeping it beside the new one as `<path>.migrated`."""
    done = Path(str(aside).removesuffix(PENDING) + DONE)
    aside.rename(done)
    return done
