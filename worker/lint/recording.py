"""The statements a Python migration's dry run executes, each at the line of its file that
executed it, for lint to read as it reads a .sql file's.

The engine's dry run (one transaction, rolled back) hands each step's up(db) a RecordingDB
in place of its `db`: it notes every statement, then runs it through the real one. The
dry run cannot hold what PostgreSQL refuses inside a transaction block, so CREATE INDEX,
DROP INDEX and REINDEX ... CONCURRENTLY run without CONCURRENTLY there (the same schema for
the steps after it, and the transaction is rolled back anyway); lint judges them as written.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from worker.catalog import Loaded, Migration
from worker.lint.sources import Located
from worker.lint.tree import concurrently


class Recorder:
    """What each step of a dry run executed, by version, in order."""

    def __init__(self) -> None:
        self.executed: dict[int, list[Located]] = {}
        self.transactional: dict[int, bool] = {}  # its up runs inside a transaction

    def wrap(self, migration: Migration, loaded: Loaded) -> Loaded:
        """`loaded` with an up(db) that records what it executes into self.executed."""
        self.transactional[migration.version] = loaded.up_transaction
        executed = self.executed.setdefault(migration.version, [])
        up = loaded.up
        if up is None:
            return loaded

        def recorded_up(db: Any) -> object:
            return up(RecordingDB(db, migration.path, executed))

        return loaded._replace(up=recorded_up)


class RecordingDB:
    """A migration's `db` that notes each statement before the real one runs it; anything
    else it is asked for is the real one's."""

    def __init__(self, db: Any, path: str, executed: list[Located]) -> None:
        self._db = db
        self._path = path  # the migration's file: the line noted is the one in it
        self._executed = executed

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._note(sql, params)
        return self._db.execute(runnable(sql), params)

    def executemany(self, sql: str, rows: Iterable[Any]) -> Any:
        rows = iter(rows)
        first = next(rows, None)
        self._note(sql, () if first is None else first)
        return self._db.executemany(runnable(sql), () if first is None else chain([first], rows))

    def executescript(self, script: str) -> Any:
        self._note(script, ())
        return self._db.executescript(runnable(script))

    def query(self, sql: str, params: Any = ()) -> Any:
        self._note(sql, params)
        return self._db.query(runnable(sql), params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def _note(self, sql: str, params: Any) -> None:
        named = None if not params else isinstance(params, Mapping)
        self._executed.append(Located(_line_in(self._path), sql, named))


def _line_in(path: str) -> int:
    """The line of `path` that is executing now, innermost first (a helper function of the
    migration calling db.execute gives its own line); 0 when none of the stack is in it."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == path:
            return frame.f_lineno
        frame = frame.f_back
    return 0


def runnable(sql: str) -> str:
    """`sql` as a dry run can execute it: with CONCURRENTLY taken out of the statements
    that say it (see the module's docstring); any other text, or text the parser refuses
    (the server will say what is wrong), unchanged."""
    if "concurrently" not in sql.lower():
        return sql
    try:
        parsed = parse_sql(sql)
    except ParseError:
        return sql
    if not any(concurrently(raw.stmt) for raw in parsed):
        return sql
    from pglast.stream import RawStream  # the printers: loaded by a lint that needs them

    parts = []
    for raw in parsed:
        if concurrently(raw.stmt):
            parts.append(RawStream()(_without_concurrently(raw.stmt)))
        else:
            end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(sql)
            parts.append(sql[raw.stmt_location:end])
    return ";\n".join(parts)


def _without_concurrently(node: ast.Node) -> ast.Node:
    if isinstance(node, ast.ReindexStmt):
        node.params = tuple(p for p in node.params or ()
                            if not (isinstance(p, ast.DefElem) and p.defname == "concurrently"))
        node.params = node.params or None
    else:
        node.concurrent = False
    return node


