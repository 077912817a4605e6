"""The `db` object a migration's up(db) and down(db) receive on SQLite.

It runs statements inside the transaction the engine opened and cannot end it: while
migration code runs, SQLite's authorizer refuses BEGIN, COMMIT, ROLLBACK and END, so a
migration can never commit half of itself. (sqlite3's own executescript() commits first,
which is why this class offers a safe one instead.) The same authorizer notes what the
migration changes of its connection (SessionChanges), for the store to undo after it,
and the tables whose objects it creates, drops or alters (TouchedTables), for the record of
the schema to read those alone.
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


# Authorizer actions that create an object; with the database name "temp", a temporary one.
CREATES = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW,
})
NOTED = CREATES | {sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_ATTACH}


class SessionChanges:
    """What migration code changed of its connection rather than of the database, as the
    authorizer saw its statements being prepared: pragmas given a value, temporary objects
    created (they outlive the transaction that made them), databases attached."""

    def __init__(self) -> None:
        self.pragmas: set[str] = set()  # lower-case names
        self.temporary = False
        self.attached = False

    def __bool__(self) -> bool:
        return bool(self.pragmas) or self.temporary or self.attached

    def note(self, action: int, name: str | None, value: str | None, database: str | None
             ) -> None:
        if action == sqlite3.SQLITE_PRAGMA:
            if value is not None and name is not None:
                self.pragmas.add(name.lower())
        elif action == sqlite3.SQLITE_ATTACH:
            self.attached = True
        elif database == "temp":
            self.temporary = True


# Actions on one table's objects: (arg1, arg2) of the authorizer names the table here.
ON_TABLE_ARG = {
    sqlite3.SQLITE_CREATE_TABLE: 0, sqlite3.SQLITE_DROP_TABLE: 0,
    sqlite3.SQLITE_CREATE_VIEW: 0, sqlite3.SQLITE_DROP_VIEW: 0,  # a view is its own tbl_name
    sqlite3.SQLITE_CREATE_INDEX: 1, sqlite3.SQLITE_DROP_INDEX: 1,
    sqlite3.SQLITE_CREATE_TRIGGER: 1, sqlite3.SQLITE_DROP_TRIGGER: 1,
}
# Actions whose effect reaches past one table's objects: ALTER TABLE rewrites whatever
# refers to a renamed table or column; a virtual table makes shadow tables of its own.
BEYOND_A_TABLE = frozenset({sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_CREATE_VTABLE,
                            sqlite3.SQLITE_DROP_VTABLE})


class TouchedTables:
    """The tables (and views) of the main database whose objects migration code created or
    dropped, as the authorizer saw its statements being prepared (setting an authorizer
    expires every prepared statement, so none runs unseen); `everything` once one could
    change more than that (BEYOND_A_TABLE, PRAGMA writable_schema)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.everything = False

    def note(self, action: int, first: str | None, second: str | None,
             database: str | None) -> None:
        if action in BEYOND_A_TABLE or (action == sqlite3.SQLITE_PRAGMA and first is not None
                                        and first.lower() == "writable_schema"):
            self.everything = True
            return
        arg = ON_TABLE_ARG.get(action)
        if arg is not None and database in (None, "main"):
            name = (first, second)[arg]
            if name is None:
                self.everything = True
            else:
                self.names.add(name)


@contextmanager
def guarded(
    connection: sqlite3.Connection,
    check: Callable[[], None] | None = None,
    changes: SessionChanges | None = None,
    refuse_transaction_control: bool = True,
    touched: TouchedTables | None = None,
) -> Iterator[MigrationDB]:
    """Hand out a MigrationDB while transaction control is refused on `connection` (unless
    the migration runs outside a transaction); what it changes of the connection is noted
    in `changes`, the tables whose objects it changes in `touched`."""
    noted = changes if changes is not None else SessionChanges()
    tables = touched if touched is not None else TouchedTables()

    def authorize(action: int, name: str | None, value: str | None, database: str | None,
                  _trigger: str | None) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and refuse_transaction_control:
            return sqlite3.SQLITE_DENY
        if action in NOTED:
            noted.note(action, name, value, database)
        if action in ON_TABLE_ARG or action in BEYOND_A_TABLE or action == sqlite3.SQLITE_PRAGMA:
            tables.note(action, name, value, database)
        return sqlite3.SQLITE_OK

    connection.set_authorizer(authorize)
    try:
        yield MigrationDB(connection, check)
    finally:
        # The authorizer runs for every column read, so it is only on while migrations run.
        connection.set_authorizer(None)
