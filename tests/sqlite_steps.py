"""Running a loaded migration's up or down on a plain sqlite3 connection, as the engine does,
for the tests that read migration files (tests/test_sql_files.py, tests/test_readers.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from worker.stores.sqlite.migration_db import guarded


def run(connection: sqlite3.Connection, function: Callable[[Any], object] | None) -> None:
    """Run up or down in one transaction, as the engine does: COMMIT, or ROLLBACK and raise."""
    assert function is not None
    connection.execute("BEGIN")
    try:
        with guarded(connection) as db:
            function(db)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def tables(connection: sqlite3.Connection) -> set[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows}
