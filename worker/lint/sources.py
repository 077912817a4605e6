"""A migration as lint reads it: its up statements, each with the line it begins on.

A .sql migration's statements come from its text (its up section, or its up file in a
format that keeps the down apart, cut by PostgreSQL's rules);
a .py file's from what its dry run executed (recording.Recorder), each at the line of the
file that executed it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from worker.catalog import Migration
from worker.stores.postgres import sql as pg_sql

# SQLite-style placeholders of a statement run with parameters, as migration code writes
# them (see pg_sql.to_psycopg); the parser reads PostgreSQL's $n instead.
QMARK = re.compile(r"\?")
NAMED = re.compile(r"(?<!:):([^\W\d]\w*)")


class Located(NamedTuple):
    """One statement and where it begins in its migration's file."""

    line: int  # the line of its first code (.sql), or of the call that executed it (.py)
    text: str  # exactly as written or executed
    named: bool | None = None  # run with parameters: :name (True) or ? (False); None: none

    def parseable(self) -> str:
        """The text with its placeholders as PostgreSQL's own ($1, $2, ...), which is what
        the parser reads (the values do not change what a statement locks)."""
        if self.named is None:
            return self.text
        pattern = NAMED if self.named else QMARK
        numbers: dict[str, int] = {}

        def number(match: re.Match[str]) -> str:
            key = match.group() if self.named else str(len(numbers))
            return f"${numbers.setdefault(key, len(numbers) + 1)}"

        return "".join(pattern.sub(number, piece) if is_code else piece
                       for is_code, piece in pg_sql.split_sql(self.text))


class Source(NamedTuple):
    """A migration's statements, in the order they run, with what lint needs around them."""

    version: int
    name: str
    path: str
    transactional: bool  # its up runs inside a transaction (no transaction:false)
    statements: list[Located]
    lines: list[str]  # the file's lines, where `-- lint:ignore` comments are read


def sql_source(migration: Migration) -> Source:
    """The up section of a .sql migration, each statement at the line its code begins on
    in the file that holds it (the up file of a migration in two files).

    Raises sql_file.SqlFileError naming the file and line for a file that cannot be read
    as a migration, OSError for one that cannot be read at all.
    """
    read, _ = migration.read_sql(pg_sql.split_statements)
    text, parsed = read.text, read.parsed
    start, end = parsed.up_span
    statements = [
        Located(text.count("\n", 0, start + offset) + 1, statement)
        for offset, statement in pg_sql.statements_at(text[start:end])
    ]
    return Source(migration.version, migration.name, migration.path, parsed.up_transaction,
                  statements, text.splitlines())


def python_source(migration: Migration, executed: list[Located], transactional: bool) -> Source:
    """A .py migration as its dry run executed it (`executed`, in order)."""
    text = migration.source().decode("utf-8", errors="replace")
    return Source(migration.version, migration.name, migration.path, transactional,
                  executed, text.splitlines())
