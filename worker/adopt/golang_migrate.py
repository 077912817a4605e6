"""golang-migrate's tracking table, as its drivers leave it.

    PostgreSQL  schema_migrations (version bigint not null primary key,
                                   dirty boolean not null)
    SQLite      schema_migrations (version uint64, dirty bool), with a unique index on version

It keeps one row: the newest version migrated to, and whether the migration to it failed
partway (dirty). Every migration up to that version counts as applied; no time is kept. No
row, or version -1 (its "nil version"), means nothing is applied.
"""

from __future__ import annotations

from worker.adopt.reading import Applied, Problem, Reading, Rows, truth

NAME = "golang-migrate"
TABLE = "schema_migrations"
COLUMNS = frozenset({"version", "dirty"})
SHAPE = "schema_migrations(version, dirty)"


def recognizes(columns: frozenset[str]) -> bool:
    return columns == COLUMNS


def read(rows: Rows) -> Reading:
    """The newest version, covering every one below it; `dirty` as a problem."""
    found = rows("SELECT version, dirty FROM {table}")
    if not found:
        return Reading([])
    if len(found) > 1:
        versions = ", ".join(str(version) for version, _ in found)
        return Reading([], problems=(Problem(
            "dirty", None, f"{TABLE} holds {len(found)} rows (versions {versions}), and"
            " golang-migrate keeps one: the table was written by something else, so which"
            " version is applied is unknown"),))
    version, dirty = int(found[0][0]), truth(found[0][1])
    problems: tuple[Problem, ...] = ()
    if dirty:
        at = f"version {version}" if version >= 0 else "no version (the first migration)"
        problems = (Problem(
            "dirty", version if version > 0 else None,
            f"golang-migrate's {TABLE} is dirty at {at}: a migration failed partway and"
            " golang-migrate stopped there; repair the schema by hand, then record the"
            " version it is really at with `migrate force V`"),)
    if version < 0:
        return Reading([], problems=problems)
    newest = Applied(version, None, f"version {version}")
    return Reading([newest], covers=newest, problems=problems)
