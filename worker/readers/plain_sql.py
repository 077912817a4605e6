"""A file of plain SQL, as golang-migrate and Flyway write one: no sections and no markers,
only statements; and whether they may run inside a transaction.

golang-migrate's PostgreSQL driver sends a file in one round trip, which PostgreSQL runs as
one implicit transaction; a statement PostgreSQL refuses inside a transaction block
(CREATE INDEX CONCURRENTLY) therefore only works there alone in its file. Flyway looks at
each statement and runs a file of such statements outside a transaction. Both come to the
rule read here: a file whose statements all are of that kind runs outside a transaction,
every other file inside one (where PostgreSQL refuses such a statement among others, as it
does for them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from worker.sql_file import section_statements
from worker.stores.postgres import sql as pg_sql

# Leading words of the statements PostgreSQL refuses inside a transaction block (SQLite's
# VACUUM too); REINDEX is read apart, its options may come between its words.
OUTSIDE_A_TRANSACTION = (
    ("CREATE", "INDEX", "CONCURRENTLY"),
    ("CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"),
    ("DROP", "INDEX", "CONCURRENTLY"),
    ("VACUUM",),
    ("CREATE", "DATABASE"),
    ("DROP", "DATABASE"),
    ("CREATE", "TABLESPACE"),
    ("DROP", "TABLESPACE"),
    ("ALTER", "SYSTEM"),
)
REINDEX_OUTSIDE = frozenset({"CONCURRENTLY", "SCHEMA", "DATABASE", "SYSTEM"})
WORDS_READ = 8  # tokens of a statement looked at: REINDEX (VERBOSE) INDEX CONCURRENTLY ...


def statements(
    text: str, filename: str, section: str, split_statements: Callable[[str], Iterator[str]]
) -> list[str]:
    """The statements of a whole file that is the `section` ("up", "down") of a migration;
    none for a file that is empty or holds only comments.

    Raises SqlFileError naming the file and line if it ends inside a statement.
    """
    return section_statements(split_statements, text, section, 1, filename)


def leading_words(statement: str) -> list[str]:
    """The first words of `statement`, upper-cased, comments skipped (PostgreSQL's reading,
    which SQLite's keywords survive too)."""
    tokens = next(pg_sql.leading_tokens(statement, WORDS_READ), [])
    return [token.text.upper() for token in tokens if token.kind == pg_sql.WORD]


def refuses_transaction(statement: str) -> bool:
    """Whether `statement` is one the database refuses to run inside a transaction block,
    by its leading words (CREATE INDEX CONCURRENTLY, VACUUM, ...)."""
    words = leading_words(statement)
    if words[:1] == ["REINDEX"]:
        return not REINDEX_OUTSIDE.isdisjoint(words)
    return any(tuple(words[: len(prefix)]) == prefix for prefix in OUTSIDE_A_TRANSACTION)


def runs_in_transaction(statements: list[str]) -> bool:
    """False for statements that all must run outside a transaction (see the module's
    rule); True for any other list, an empty one included."""
    return not statements or not all(refuses_transaction(s) for s in statements)
