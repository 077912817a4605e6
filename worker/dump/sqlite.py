"""A SQLite database's schema as the SQL that recreates it, from sqlite_master.

    tables   (by rowid: creation order)   CREATE TABLE / CREATE VIRTUAL TABLE
    indexes                               CREATE [UNIQUE] INDEX (automatic ones have no SQL)
    views                                 CREATE VIEW
    triggers                              CREATE TRIGGER (INSTEAD OF ones need their view)

Each statement is the text SQLite stored, ending with `;`. Grouped by kind, not in rowid
order alone: a table rebuilt after a view that reads it (the 12-step ALTER) gets a higher
rowid than the view, and a dropped object's rowid may be reused by a later one. SQLite
binds a view's and a trigger's names only when they are used, so views and triggers load
in any order once the tables exist. Objects named sqlite_* are SQLite's own and left out
(sqlite_sequence is made again by the first AUTOINCREMENT table).
"""

from __future__ import annotations

import sqlite3

KIND_ORDER = ("table", "index", "view", "trigger")
_OBJECTS = (
    "SELECT type, sql FROM sqlite_master"
    r" WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\' AND sql IS NOT NULL ORDER BY rowid"
)


def schema_statements(connection: sqlite3.Connection) -> list[str]:
    """Every object's CREATE statement, tables first, then indexes, views and triggers, each
    kind in creation order. Raises sqlite3.Error when sqlite_master cannot be read."""
    rows = connection.execute(_OBJECTS).fetchall()
    ordered = sorted(rows, key=lambda row: KIND_ORDER.index(row[0]))  # stable: rowid kept
    return [sql.rstrip().removesuffix(";") + ";" for _, sql in ordered]


def literal(value: object) -> str:
    """A value as an SQLite literal: NULL, a number, or a quoted string."""
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
