"""Flyway's schema history table, as its createMetaDataTable.sql makes it.

    PostgreSQL  flyway_schema_history ("installed_rank" INT NOT NULL (primary key),
                "version" VARCHAR(50), "description" VARCHAR(200) NOT NULL,
                "type" VARCHAR(20) NOT NULL, "script" VARCHAR(1000) NOT NULL,
                "checksum" INTEGER, "installed_by" VARCHAR(100) NOT NULL,
                "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
                "execution_time" INTEGER NOT NULL, "success" BOOLEAN NOT NULL)
    SQLite      the same columns; "installed_on" TEXT NOT NULL
                DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now'))

A row per run, in installed_rank order; `version` is text ("3", "1.1"), NULL for a
repeatable migration (R__name.sql). By `type`: a BASELINE row says every version up to its
own is in the schema; UNDO_SQL (and the other UNDO_ types) and DELETE (written by `repair`
for a missing migration) take a version back; SCHEMA is Flyway's note that it created the
schema; any other type (SQL, JDBC, SCRIPT...) applied its version. A row with success false
is a run that failed: Flyway refuses to migrate until `repair`, and so does adopt.
"""

from __future__ import annotations

from worker.adopt.reading import Applied, Problem, Reading, Rows, truth, version_of
from worker.adopt.times import utc_text

NAME = "flyway"
TABLE = "flyway_schema_history"
COLUMNS = frozenset({
    "installed_rank", "version", "description", "type", "script", "checksum",
    "installed_by", "installed_on", "execution_time", "success",
})
SHAPE = "flyway_schema_history(installed_rank, version, ..., success)"
NOT_A_MIGRATION = frozenset({"SCHEMA"})
TAKEN_BACK = ("UNDO_", "DELETE")  # type prefixes whose row un-applies its version


def recognizes(columns: frozenset[str]) -> bool:
    return columns >= COLUMNS


def read(rows: Rows) -> Reading:
    """The versions applied and not taken back since, the newest baseline covering those
    below it; each failed row as a problem."""
    applied: dict[str, Applied | None] = {}  # by version text; None: no version here
    covers: Applied | None = None
    problems = []
    for rank, text, kind, script, installed_on, success in rows(
            "SELECT installed_rank, version, type, script, installed_on, success"
            " FROM {table} ORDER BY installed_rank"):
        kind = str(kind or "").upper()
        if not truth(success):
            problems.append(Problem(
                "failed", version_of(text),
                f"flyway_schema_history row {rank} ({kind} {script}) has success = false:"
                " that run failed; repair the schema, then `flyway repair` removes the row"))
            continue
        if text is None or kind in NOT_A_MIGRATION:
            continue  # a repeatable migration, or Flyway's own note
        version = version_of(str(text))
        said = f"version {text} ({script})"
        entry = None if version is None else Applied(version, utc_text(installed_on), said)
        if kind == "BASELINE":
            if entry is None:
                problems.append(Problem("missing", None, f"Flyway's baseline is at version"
                                        f" {text}, which no migration file here can have"))
            elif covers is None or entry.version >= covers.version:
                covers = entry
        elif kind.startswith(TAKEN_BACK):
            applied.pop(str(text), None)
        else:
            applied[str(text)] = entry
    for text, entry in applied.items():
        if entry is None:
            problems.append(Problem("missing", None, f"Flyway applied version {text}, which"
                                    " no migration file here can have (a version here is a"
                                    " whole number)"))
    found = sorted(entry for entry in applied.values() if entry is not None)
    return Reading(found, covers=covers, problems=tuple(problems))
