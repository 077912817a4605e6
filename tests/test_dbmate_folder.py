"""A dbmate project's folder end to end through real nodes, on SQLite and on PostgreSQL:
its down sections as dbmate reads them (an empty one reverts nothing and succeeds)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.support import Workspace, request

# A project's folder in miniature: one real down, then downs left empty, holding only a
# comment, or only blank lines, as dbmate's template leaves them.
FOLDER = {
    "20240101120000_create_users.sql": (
        "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n\n"
        "-- migrate:down\nDROP TABLE users;\n"
    ),
    "20240102120000_create_roles.sql": (
        "-- migrate:up\nCREATE TABLE roles (name TEXT);\nINSERT INTO roles VALUES ('admin');\n\n"
        "-- migrate:down\n"
    ),
    "20240103120000_index_names.sql": (
        "-- migrate:up\nCREATE INDEX users_name ON users (name);\n\n"
        "-- migrate:down\n-- the index stays: dropping it would lock the table; see ADR 7\n"
    ),
    "20240104120000_backfill.sql": (
        "-- migrate:up\nINSERT INTO users (id, name) VALUES (1, 'root');\n\n"
        "-- migrate:down\n\n\n"
    ),
}
VERSIONS = [20240101120000, 20240102120000, 20240103120000, 20240104120000]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, workspace: Workspace) -> str:
    """The workspace's --db: its SQLite file, or the module's fresh PostgreSQL database."""
    if request.param == "postgresql":
        workspace.db = request.getfixturevalue("pg_database")  # node_command passes it
    return str(workspace.db)


def tables(database: str) -> set[str]:
    """The database's tables, as another program connected to it sees them."""
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database) as connection:
            rows = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    else:
        with closing(sqlite3.connect(database)) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            rows = rows.fetchall()
    return {name for (name,) in rows}


def test_a_dbmate_folder_with_empty_down_sections_rolls_back_to_zero(
    workspace: Workspace, database: str
) -> None:
    folder: Path = workspace.root / "migrations"
    folder.mkdir()
    for filename, text in FOLDER.items():
        (folder / filename).write_text(text)

    replies, completed = workspace.run(
        [request("migrate", 1), request("validate", 2), request("rollback", 3, to=0),
         request("status", 4), request("history", 5)],
        "--migrations", str(folder),
    )

    migrated, validated, rolled_back, status, history = replies
    assert migrated["count"] == 4, completed.stderr
    assert validated["ok"] is True
    assert rolled_back["type"] == "migrations_rolled_back", rolled_back
    assert [m["version"] for m in rolled_back["migrations"]] == VERSIONS[::-1]
    assert [m["applied"] for m in status["migrations"]] == [False] * 4
    assert [(e["version"], e["action"]) for e in history["events"]] == [
        *((v, "apply") for v in VERSIONS), *((v, "rollback") for v in VERSIONS[::-1])]
    assert {"users", "roles"} & tables(database) == {"roles"}  # its down reverted nothing
