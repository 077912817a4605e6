"""dbmate's tracking table, as its drivers create it.

    PostgreSQL  schema_migrations (version varchar(255) primary key)  (varchar in older ones)
    SQLite      "schema_migrations" (version varchar(128) primary key)

A row per applied migration: its version as the file name spells it ("0001",
"20240501100000"). No time is kept; a rollback deletes the row.
"""

from __future__ import annotations

from worker.adopt.reading import Applied, Problem, Reading, Rows, version_of

NAME = "dbmate"
TABLE = "schema_migrations"
COLUMNS = frozenset({"version"})
SHAPE = "schema_migrations(version)"


def recognizes(columns: frozenset[str]) -> bool:
    return columns == COLUMNS


def read(rows: Rows) -> Reading:
    """Each version in the table."""
    applied, problems = [], []
    for (text,) in rows("SELECT version FROM {table} ORDER BY version"):
        version = version_of(str(text).strip())
        if version is None:
            problems.append(Problem("missing", None, f"dbmate applied version {text!r},"
                                    " which no migration file here can have"))
            continue
        applied.append(Applied(version, None, f"version {text}"))
    return Reading(applied, problems=tuple(problems))
