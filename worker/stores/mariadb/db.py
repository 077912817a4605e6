"""The `db` a migration's up(db) and down(db) receive on MariaDB and MySQL.

The same methods and `?` parameters as on SQLite and PostgreSQL. Each statement sent
through execute, executemany and executescript is numbered by the step's StatementSteps
(worker/steps.py) and, when it commits at once (DDL: see sql.commits_at_once; every
statement of a migration outside a transaction), runs between two records:

    save Partial(done = n - 1, running = n)   COMMIT: the DML before it commits with it
    run statement n                           the server commits it, or it fails whole
    BEGIN                                     the DML after it is the step's again

so that statements 1..n-1 are known to be in effect and only n can be uncertain. After a
statement that failed cleanly (the server answered), the record says exactly what stays.
A dry run refuses a statement that would commit, before it is sent.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pymysql

from broker.errors import PRECONDITION_FAILED, ReplyError
from worker.steps import StatementSteps, first_line
from worker.stores.mariadb import sql as mysql_sql

if TYPE_CHECKING:
    from worker.stores.mariadb.store import MariaDbStore

# Statements that may change the session beyond its transaction (settings, the database
# in use, temporary tables): the store looks for what to undo only after such a one.
TOUCHES_SESSION = re.compile(r"\bSET\b|\bUSE\b|TEMPORARY|@@", re.IGNORECASE)
# A temporary table a statement creates: dropped after the migration (MariaDB before 11.2
# lists a session's temporary tables nowhere, so they are found by their CREATE).
CREATES_TEMPORARY = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?TEMPORARY\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"((?:`(?:[^`]|``)+`|[\w$]+)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[\w$]+))?)", re.IGNORECASE)


class TransactionControlRefused(pymysql.ProgrammingError):
    """Migration code tried to begin or end the transaction the engine owns."""


class DryRunCommits(ReplyError):
    """Error 22: a dry run reached a statement that would commit at once."""


class MariaDbMigrationDB:
    def __init__(
        self,
        store: MariaDbStore,
        connection: pymysql.connections.Connection,
        steps: StatementSteps | None,
        in_transaction: bool,
        dry_run: bool,
        check: Callable[[], None] | None,
    ) -> None:
        self._store = store
        self._connection = connection
        self._steps = steps
        self._in_transaction = in_transaction
        self._dry_run = dry_run
        self._check = check or (lambda: None)
        self.touched_session = False  # a statement may have changed the session
        self.temporary: list[str] = []  # temporary tables its statements created, as named

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Rows:
        """Run one statement with parameters; returns its rows."""
        return self._statement(sql, lambda cursor: cursor.execute(*mysql_sql.to_pymysql(
            sql, params)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> Rows:
        """Run one statement once per row of parameters (one numbered statement)."""
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return Rows(None)
        query = mysql_sql.translate(sql, named=isinstance(first, Mapping))
        values = [dict(row) if isinstance(row, Mapping) else tuple(row)
                  for row in itertools.chain([first], rows)]
        return self._statement(sql, lambda cursor: cursor.executemany(query, values))

    def executescript(self, script: str) -> None:
        """Run each statement of `script` (split by MySQL's rules) in order."""
        for statement in self._store.split_statements(script):
            self.execute(statement)

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
        """Run one read and return all its rows; never numbered, never skipped (a statement
        that commits at once is one of the step's, as through execute)."""
        if not self._in_transaction or mysql_sql.commits_at_once(sql):
            return self.execute(sql, params).fetchall()
        self._check()
        self._refuse_transaction_control(sql)
        cursor = self._connection.cursor()
        cursor.execute(*mysql_sql.to_pymysql(sql, params))
        return list(cursor.fetchall())

    def _statement(self, sql: str, run: Callable[[Any], object]) -> Rows:
        self._check()
        self._refuse_transaction_control(sql)
        number, due = (0, True) if self._steps is None else self._steps.next(sql)
        if not due:
            return Rows(None)  # in effect since a step that stopped partway
        self._store.note_schema_targets(sql)
        if TOUCHES_SESSION.search(sql):
            self.touched_session = True
            self.temporary += CREATES_TEMPORARY.findall(sql)
        commits = not self._in_transaction or mysql_sql.commits_at_once(sql)
        if commits and self._dry_run:
            raise DryRunCommits(
                PRECONDITION_FAILED,
                f"a dry run cannot run statement {number or ''} ({first_line(sql)!r}):"
                " MariaDB and MySQL commit it at once and cannot roll it back, so the dry run"
                " stopped there; the statements before it ran and were rolled back",
            )
        steps = self._steps
        if commits and steps is not None:
            self._store.save_partial(steps.partial(number - 1, running=number), steps.version)
            steps.saved = True
            steps.committed = number - 1  # the DML before it committed with the record
        cursor = self._connection.cursor()
        try:
            run(cursor)  # a failure: the store's migration_db says what stays
        except BaseException:
            if steps is not None:
                steps.failed = steps.current
            raise
        if commits and steps is not None:
            steps.committed = number
            # The record saying statement n is done comes with the next one, or with the
            # step's end; until then a kill leaves n said as uncertain, never as done.
            self._store.begin()
        return Rows(cursor)

    def _refuse_transaction_control(self, sql: str) -> None:
        refused = mysql_sql.transaction_control(sql)
        if refused is not None:
            raise TransactionControlRefused(
                f"{refused} is refused: a migration runs inside the engine's transaction"
                " and cannot begin or end one (SAVEPOINT is fine)")


class Rows:
    """What db.execute() returns: its rows, read as from a sqlite3 cursor."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return -1 if self._cursor is None else self._cursor.rowcount

    @property
    def description(self) -> Any:
        return None if self._cursor is None else self._cursor.description

    def fetchone(self) -> tuple | None:
        return None if self._cursor is None else self._cursor.fetchone()

    def fetchmany(self, size: int = 1) -> list[tuple]:
        return [] if self._cursor is None else list(self._cursor.fetchmany(size))

    def fetchall(self) -> list[tuple]:
        return [] if self._cursor is None else list(self._cursor.fetchall())

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())
