"""A `dump` request's reply: the managed schema as SQL, the rows of what is applied, and the
live schema's fingerprint.

    store.dialect  -->  sqlite.schema_statements(connection)   (one read transaction)
                        postgres.schema_sql(url)              (pg_dump)
                        mariadb.schema_sql(url)               (mysqldump)
    store.applied()  +  the tracking table's rows             -->  INSERT INTO ... ;
    store.read_schema() (worker.schema, without the tracking tables) -->  fingerprint

Only the tracking table's rows are written, not its companions' (stored replies, history):
loading a dump gives a database whose status shows the same migrations applied. Every
NOT NULL column of the tracking table is filled (request_id, which may be null, is not).
"""

from __future__ import annotations

from typing import Any

from worker.schema.shape import fingerprint
from worker.stores.interface import Store

DUMP = "schema_dump"
# The tracking table's columns a dump records, each NOT NULL in every store's SCHEMA.
COLUMNS = ("version", "name", "checksum", "applied_at", "execution_ms", "applied_seq")
_ROWS = f"SELECT {', '.join(COLUMNS)} FROM {{table}} ORDER BY version"
APPLIED_HEADER = "-- The migrations applied (migrations-node), as their tracking table records them"


def dump(store: Store) -> dict[str, Any]:
    """The reply to `dump`: {"type": "schema_dump", "sql": ..., "fingerprint": ...}.

    Raises error 22 when the backend's dump program is missing or fails, and what reading
    the tracking table raises (a table that is another program's, one dropped by hand).
    """
    if store.dialect == "sqlite":
        from worker.dump import sqlite as backend

        with store.reading():  # one snapshot: the SQL, the rows and the fingerprint agree
            statements = backend.schema_statements(store.connection)
            rows = _rows(store)
            live = store.read_schema()
        text = "\n\n".join(statements)
    else:
        if store.dialect == "postgresql":
            from worker.dump import postgres as backend
        else:
            from worker.dump import mariadb as backend
        with store.reading():
            rows = _rows(store)  # connects first, if the store had no session yet
            live = store.read_schema()
        text = backend.schema_sql(store.url)
    text = text.strip("\n") + "\n" if text.strip() else ""
    return {"type": DUMP, "sql": text + _inserts(store, backend, rows),
            "fingerprint": fingerprint(live)}


def _rows(store: Store) -> list[tuple]:
    """The tracking table's rows in version order; none when it does not exist yet."""
    if not store.applied():  # raises for a tracking table that cannot be read as ours
        return []
    return store.foreign_rows(store.tables.migrations, _ROWS)


def _inserts(store: Store, backend: Any, rows: list[tuple]) -> str:
    """One INSERT per applied migration, after a comment line; "" when none is applied."""
    if not rows:
        return ""
    table = backend.quoted(store.tables.migrations)
    if store.dialect == "postgresql":  # pg_dump's SQL empties search_path
        table = f"{backend.quoted(store.schema)}.{table}"
    columns = ", ".join(COLUMNS)
    lines = [f"INSERT INTO {table} ({columns}) VALUES"
             f" ({', '.join(backend.literal(value) for value in row)});" for row in rows]
    return "\n" + APPLIED_HEADER + "\n\n" + "\n".join(lines) + "\n"
