"""verify end to end: every down tested on a scratch database, the live one only read.

Each test runs on SQLite (a file in the workspace) and on PostgreSQL and MariaDB (a fresh
database on the machine's server, skipped, saying why, only when none answers).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from broker import endpoint
from tests.processes import gone
from tests.support import request
from tests.support import run_requests as run

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
MARIADB = ("127.0.0.1", 3306)

USERS = ("-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(100));\n"
         "-- migrate:down\nDROP TABLE users;\n")


@pytest.fixture
def folder(folder: Path) -> Path:
    """conftest's migrations folder, with 0001_users.sql."""
    (folder / "0001_users.sql").write_text(USERS)
    return folder


def test_a_down_that_forgets_an_index_is_named(workspace, database, folder):
    (folder / "0002_email_index.sql").write_text(
        "-- migrate:up\nCREATE INDEX users_email ON users (email);\n-- migrate:down\n")
    migrated, verified = run(workspace, folder, request("migrate", 1), request("verify", 2))
    assert migrated["count"] == 2
    assert verified["ok"] is False and verified["verified"] == 2
    (problem,) = verified["problems"]
    assert (problem["version"], problem["kind"]) == (2, "down_leaves_changes")
    assert len(problem["differences"]) == 1 and "users_email added" in problem["differences"][0]
    assert verified["live"] == {"matches": True, "differences": []}


def test_a_down_that_drops_a_column_its_up_did_not_add_is_named(workspace, database, folder):
    (folder / "0002_nick.sql").write_text(
        "-- migrate:up\nALTER TABLE users ADD COLUMN nick VARCHAR(20);\n"
        "-- migrate:down\nALTER TABLE users DROP COLUMN nick;\n"
        "ALTER TABLE users DROP COLUMN email;\n")
    (verified,) = run(workspace, folder, request("verify", 1))
    (problem,) = verified["problems"]
    assert problem["kind"] == "down_leaves_changes"
    assert any("email" in d and "removed" in d for d in problem["differences"]), problem


def test_a_clean_folder_verifies_and_the_live_schema_matches(workspace, database, folder):
    (folder / "0002_posts.sql").write_text(
        "-- migrate:up\nCREATE TABLE posts (id INTEGER PRIMARY KEY, title VARCHAR(50));\n"
        "CREATE INDEX posts_title ON posts (title);\n"
        "-- migrate:down\nDROP TABLE posts;\n")
    migrated, verified = run(workspace, folder, request("migrate", 1), request("verify", 2))
    assert migrated["count"] == 2
    assert verified == {"type": "verification", "in_reply_to": 2, "ok": True, "verified": 2,
                        "problems": [], "live": {"matches": True, "differences": []}}


def test_an_up_that_fails_after_its_own_down_is_named(workspace, database, folder):
    (folder / "0002_seed.sql").write_text(
        "-- migrate:up\nINSERT INTO users (id, email) VALUES (1, 'a@example.com');\n"
        "-- migrate:down\n")
    (verified,) = run(workspace, folder, request("verify", 1))
    (problem,) = verified["problems"]
    assert (problem["version"], problem["kind"]) == (2, "up_fails_again"), problem


def test_a_migration_without_down_is_named(workspace, database, folder):
    (folder / "0002_forever.sql").write_text(
        "-- migrate:up\nCREATE TABLE forever (id INTEGER);\n")
    (verified,) = run(workspace, folder, request("verify", 1))
    (problem,) = verified["problems"]
    assert (problem["version"], problem["kind"]) == (2, "no_down"), problem


def test_a_hand_made_index_on_the_live_database_is_named(workspace, database, folder):
    run(workspace, folder, request("migrate", 1))
    execute_by_hand(workspace, database, "CREATE INDEX by_hand ON users (email)")
    (verified,) = run(workspace, folder, request("verify", 2))
    assert verified["problems"] == [] and verified["ok"] is False
    assert verified["live"]["matches"] is False
    assert [d for d in verified["live"]["differences"] if "by_hand added" in d]


def test_verify_never_writes_the_live_database(workspace, database, folder):
    (folder / "0002_email_index.sql").write_text(
        "-- migrate:up\nCREATE INDEX users_email ON users (email);\n-- migrate:down\n")
    run(workspace, folder, request("migrate", 1))
    before = live_state(workspace, database)
    (verified,) = run(workspace, folder, request("verify", 2))
    assert verified["problems"]
    assert live_state(workspace, database) == before


def test_the_command_exits_1_and_names_the_problem(workspace, database, folder):
    (folder / "0002_email_index.sql").write_text(
        "-- migrate:up\nCREATE INDEX users_email ON users (email);\n-- migrate:down\n")
    completed = subprocess.run(workspace.node_command("--migrations", str(folder), "verify"),
                               capture_output=True, text=True, env=workspace.env,
                               cwd=workspace.root, timeout=120)
    assert completed.returncode == 1, completed.stderr
    assert "down leaves changes  2  email_index" in completed.stdout
    assert "users_email added" in completed.stdout


def execute_by_hand(workspace, database: str, statement: str) -> None:
    """Run `statement` on the live database as another program would."""
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute(statement)
    elif database.startswith("mysql://"):
        import pymysql

        with pymysql.connect(host=MARIADB[0], port=MARIADB[1], user="root", password="",
                             database=database.rsplit("/", 1)[1], autocommit=True) as c:
            c.cursor().execute(statement)
    else:
        import sqlite3

        connection = sqlite3.connect(database)
        connection.execute(statement)
        connection.commit()
        connection.close()


def live_state(workspace, database: str) -> object:
    """What the live database holds, as another program sees it: a SQLite file's bytes,
    a server's catalog (its managed schema) and tracking rows."""
    if not database.startswith(("postgresql://", "mysql://")):
        return hashlib.sha256(Path(database).read_bytes()).hexdigest()
    if database.startswith("postgresql://"):
        import psycopg

        from worker.schema import postgres as schema_of

        with psycopg.connect(database, autocommit=True) as connection:
            rows = connection.execute("SELECT * FROM schema_migrations ORDER BY 1").fetchall()
            return schema_of.read(connection, set()), rows
    import pymysql

    from worker.schema import mariadb as schema_of

    with pymysql.connect(host=MARIADB[0], port=MARIADB[1], user="root", password="",
                         database=database.rsplit("/", 1)[1], autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT * FROM schema_migrations ORDER BY 1")
        return schema_of.read(connection, set()), cursor.fetchall()


def test_a_role_that_may_not_create_databases_is_told_so(workspace, database, folder):
    if not database.startswith("postgresql://"):
        pytest.skip("a PostgreSQL role's CREATEDB")
    import psycopg

    role = f"mn_nocreate_{secrets.token_hex(4)}"
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB")
        admin.execute(f"ALTER DATABASE {name} OWNER TO {role}")
    try:
        workspace.db = database.replace("postgres@", f"{role}@")
        (refused,) = run(workspace, folder, request("verify", 1))
        assert refused["code"] == 22, refused
        assert "this role may not create one" in refused["text"]
        assert "grant it CREATEDB" in refused["text"]
    finally:
        pid = endpoint.read_owner(endpoint.for_database(workspace.db).lock_path).pid
        if pid is not None and not gone(pid):
            os.kill(pid, signal.SIGKILL)
        workspace.db = database
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} OWNER TO postgres")
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
            admin.execute(f"DROP ROLE IF EXISTS {role}")
