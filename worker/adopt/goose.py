"""goose's tracking table, as its dialects create it.

    PostgreSQL  goose_db_version (id serial NOT NULL, version_id bigint NOT NULL,
                                  is_applied boolean NOT NULL,
                                  tstamp timestamp NULL default now(), PRIMARY KEY(id))
    SQLite      goose_db_version (id INTEGER PRIMARY KEY AUTOINCREMENT,
                                  version_id INTEGER NOT NULL, is_applied INTEGER NOT NULL,
                                  tstamp TIMESTAMP DEFAULT (datetime('now')))

A row per apply; older goose also added a row with is_applied false per rollback (newer
releases delete the version's rows instead). The latest row of a version (highest id) says
whether it is applied, and its tstamp when. version_id 0 is goose's own row, written when
it creates the table: no migration.
"""

from __future__ import annotations

from worker.adopt.reading import Applied, Problem, Reading, Rows, truth, version_of
from worker.adopt.times import utc_text

NAME = "goose"
TABLE = "goose_db_version"
COLUMNS = frozenset({"id", "version_id", "is_applied", "tstamp"})
SHAPE = "goose_db_version(id, version_id, is_applied, tstamp)"
MARKER_VERSION = 0  # goose's own row


def recognizes(columns: frozenset[str]) -> bool:
    return columns >= COLUMNS


def read(rows: Rows) -> Reading:
    """Each version whose latest row says applied, with that row's time."""
    latest: dict[int, tuple[bool, object]] = {}
    for _, version_id, is_applied, tstamp in rows(
            "SELECT id, version_id, is_applied, tstamp FROM {table} ORDER BY id"):
        latest[int(version_id)] = (truth(is_applied), tstamp)  # a later row replaces it
    applied, problems = [], []
    for version_id, (is_applied, tstamp) in sorted(latest.items()):
        if version_id == MARKER_VERSION or not is_applied:
            continue
        version = version_of(version_id)
        if version is None:
            problems.append(Problem("missing", None, f"goose applied version {version_id},"
                                    " which no migration file here can have"))
            continue
        applied.append(Applied(version, utc_text(tstamp), f"version {version}"))
    return Reading(applied, problems=tuple(problems))
