"""sql-migrate's tracking table, as gorp creates it for its MigrationRecord.

    PostgreSQL  gorp_migrations ("id" text not null primary key,
                                 "applied_at" timestamp with time zone)
    SQLite      gorp_migrations ("id" varchar(255) not null primary key, "applied_at" datetime)

(sql-migrate from 2023 on adds a "checksum" column.) A row per applied migration whose id
is the migration's file name ("3_add_email.sql"), its version the digits it starts with, as
sql-migrate orders them; a rollback deletes the row.
"""

from __future__ import annotations

from worker.adopt.reading import Applied, Problem, Reading, Rows, leading_version
from worker.adopt.times import utc_text

NAME = "sql-migrate"
TABLE = "gorp_migrations"
COLUMNS = frozenset({"id", "applied_at"})
SHAPE = "gorp_migrations(id, applied_at)"
LATER_COLUMNS = frozenset({"checksum"})


def recognizes(columns: frozenset[str]) -> bool:
    return COLUMNS <= columns <= COLUMNS | LATER_COLUMNS


def read(rows: Rows) -> Reading:
    """Each file name in the table, by the version it starts with, and when it was applied."""
    applied: dict[int, Applied] = {}
    problems = []
    for name, applied_at in rows("SELECT id, applied_at FROM {table} ORDER BY id"):
        version = leading_version(str(name))
        if version is None:
            problems.append(Problem("missing", None, f"sql-migrate applied {name}, whose"
                                    " name starts with no version a migration file here can"
                                    " have"))
        elif version in applied:
            problems.append(Problem("missing", version, f"sql-migrate applied both"
                                    f" {applied[version].said} and {name}, which have the"
                                    f" same version {version}: one file here cannot be both"))
        else:
            applied[version] = Applied(version, utc_text(applied_at), str(name))
    return Reading(sorted(applied.values()), problems=tuple(problems))
