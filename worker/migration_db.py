"""The `db` object a migration's up(db) and down(db) receive.

It runs statements inside the transaction the engine opened and cannot end it: while
migration code runs, SQLite's authorizer refuses BEGIN, COMMIT, ROLLBACK and END, so a
migration can never commit half of itself. (sqlite3's own executescript() commits first,
which is why this class offers a safe one instead.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from worker.sql_file import split_statements


class MigrationDB:
    def __init__(
        self, connection: sqlite3.Connection, check: Callable[[], None] | None = None
    ) -> None:
        self._connection = connection
        self._check = check or _nothing  # runs before every statement: a cancel raises there

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement with parameters; returns the cursor for reading rows."""
        self._check()
        return self._connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        self._check()
        return self._connection.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        """Run several `;`-separated statements in the current transaction, in order.

        Each runs as written (see sql_file.split_statements). Raises sqlite3.Error from the
        first statement that fails, and sql_file.IncompleteStatement (a
        sqlite3.ProgrammingError) before running anything if the script ends inside one.
        """
        statements = list(split_statements(script))
        for statement in statements:
            self._check()
            self._connection.execute(statement)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple]:
        """Run one statement and return all its rows."""
        return self.execute(sql, params).fetchall()


def _nothing() -> None:
    pass


def _refuse_transaction_control(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_TRANSACTION else sqlite3.SQLITE_OK


@contextmanager
def guarded(
    connection: sqlite3.Connection, check: Callable[[], None] | None = None
) -> Iterator[MigrationDB]:
    """Hand out a MigrationDB while transaction control is refused on `connection`."""
    connection.set_authorizer(_refuse_transaction_control)
    try:
        yield MigrationDB(connection, check)
    finally:
        # The authorizer runs for every column read, so it is only on while migrations run.
        connection.set_authorizer(None)
