"""The schema recorded after every step, and drift against it (issue 24, items 1 and 2).

Each node test runs on SQLite (a file in the workspace) and on PostgreSQL and MariaDB (a
fresh database on the machine's server, skipped, saying why, only when none answers),
changing the schema by hand through a connection of its own, as an operator would. The
last tests run the engine in this process on the same three, to count catalog reads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend
from tests.support import request
from tests.support import run_requests as run
from worker.catalog import Catalog
from worker.engine import Engine
from worker.params import Params
from worker.schema.shape import objects_of
from worker.stores.interface import tracking_tables

SCHEMAS = tracking_tables().schemas
USERS = ("-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(100));\n"
         "CREATE INDEX users_email ON users (email);\n"
         "-- migrate:down\nDROP TABLE users;\n")
POSTS = ("-- migrate:up\nCREATE TABLE posts (id INTEGER PRIMARY KEY, title VARCHAR(50));\n"
         "-- migrate:down\nDROP TABLE posts;\n")
ROWS = ("-- migrate:up\nINSERT INTO users (id, email) VALUES (1, 'a@example.com');\n"
        "-- migrate:down\nDELETE FROM users WHERE id = 1;\n")


@pytest.fixture
def folder(folder: Path) -> Path:
    """conftest's migrations folder, with 0001_users.sql: a table and an index on it."""
    (folder / "0001_users.sql").write_text(USERS)
    return folder


def by_hand(database: str, *statements: str) -> list[tuple]:
    """Run `statements` through a connection of the test's own (autocommit), as an
    operator's client would; the last one's rows."""
    rows: list[tuple] = []
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database, autocommit=True) as connection:
            for statement in statements:
                cursor = connection.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
    elif database.startswith("mysql://"):
        import pymysql

        name = database.rsplit("/", 1)[1]
        connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                     database=name, autocommit=True)
        with connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
                rows = list(cursor.fetchall())
    else:
        connection = sqlite3.connect(database, isolation_level=None)
        try:
            for statement in statements:
                rows = connection.execute(statement).fetchall()
        finally:
            connection.close()
    return rows


def drop_index(database: str) -> str:
    if database.startswith("mysql://"):
        return "DROP INDEX users_email ON users"
    return "DROP INDEX users_email"


def recorded_rows(database: str) -> list[tuple]:
    return by_hand(database, f"SELECT seq, history_seq, fingerprint, changes FROM {SCHEMAS}"
                             " ORDER BY seq")


def changed(row: tuple) -> list[str]:
    """The names of the objects a schemas row says its event changed."""
    return [name for _, name, _ in json.loads(row[3])]


def drift_of(reply: dict) -> list[str]:
    (problem,) = [p for p in reply["problems"] if p["kind"] == "schema_drift"]
    assert set(problem) == {"kind", "differences"}
    return problem["differences"]


def test_a_column_added_and_an_index_dropped_by_hand_are_drift_that_validate_names(
        workspace, database, folder):
    migrated, validated = run(workspace, folder, request("migrate", 1), request("validate", 2))
    assert migrated["count"] == 1 and validated["ok"] is True
    by_hand(database, "ALTER TABLE users ADD COLUMN nick VARCHAR(20)", drop_index(database))

    (validated,) = run(workspace, folder, request("validate", 3))
    assert validated["ok"] is False
    texts = drift_of(validated)
    assert len(texts) == 2, texts
    assert any("column" in t and "users.nick added" in t for t in texts), texts
    assert any("users_email" in t and t.startswith("index") and "removed" in t
               for t in texts), texts


def test_migrate_refuses_on_drift_and_applies_nothing_unless_the_request_accepts_it(
        workspace, database, folder):
    run(workspace, folder, request("migrate", 1))
    by_hand(database, "ALTER TABLE users ADD COLUMN nick VARCHAR(20)")
    (folder / "0002_posts.sql").write_text(POSTS)

    refused, status = run(workspace, folder, request("migrate", 2), request("status", 3))
    assert refused["type"] == "error" and refused["code"] == 22, refused
    assert "users.nick added" in refused["text"] and "accept_drift" in refused["text"]
    assert drift_of(refused)
    assert [m["applied"] for m in status["migrations"]] == [True, False]

    accepted, validated, history = run(
        workspace, folder, request("migrate", 4, accept_drift=True), request("validate", 5),
        request("history", 6))
    assert accepted["count"] == 1, accepted
    assert validated["ok"] is True, validated
    actions = [event["action"] for event in history["events"]]
    assert actions == ["apply", "accept_drift", "apply"]
    event = history["events"][1]
    assert event["version"] is None and "users.nick added" in event["name"]
    assert event["src"] is not None and event["checksum"] == ""


def test_a_worker_killed_after_accepting_drift_records_the_acceptance_once(
        workspace, database, folder):
    trigger = workspace.root / "crash-now"
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)
    run(workspace, folder, request("migrate", 1))
    by_hand(database, "ALTER TABLE users ADD COLUMN nick VARCHAR(20)")
    (folder / "0002_posts.sql").write_text(POSTS)
    trigger.touch()  # the acceptance's commit kills the worker; the node sends it again
    migrated, health, history = run(
        workspace, folder, request("migrate", 2, accept_drift=True), request("health", 3),
        request("history", 4))
    assert not trigger.exists() and health["worker_restarts"] == 1
    assert migrated["count"] == 1, migrated
    assert [e["action"] for e in history["events"]] == ["apply", "accept_drift", "apply"]


def test_rollback_refuses_on_drift_unless_the_request_accepts_it(workspace, database, folder):
    (folder / "0002_posts.sql").write_text(POSTS)
    run(workspace, folder, request("migrate", 1))
    by_hand(database, "ALTER TABLE users ADD COLUMN nick VARCHAR(20)")
    refused, accepted, validated = run(
        workspace, folder, request("rollback", 2), request("rollback", 3, accept_drift=True),
        request("validate", 4))
    assert refused["code"] == 22 and "nothing was rolled back" in refused["text"], refused
    assert accepted["type"] == "migration_rolled_back" and accepted["version"] == 2
    assert validated["ok"] is True


def test_a_pure_data_migration_is_no_drift_and_records_no_changed_object(
        workspace, database, folder):
    (folder / "0002_rows.sql").write_text(ROWS)
    migrated, validated = run(workspace, folder, request("migrate", 1), request("validate", 2))
    assert migrated["count"] == 2 and validated["ok"] is True
    by_hand(database, "INSERT INTO users (id, email) VALUES (2, 'b@example.com')",
            "UPDATE users SET email = 'c@example.com' WHERE id = 1")
    (validated,) = run(workspace, folder, request("validate", 3))
    assert validated["ok"] is True, validated
    (_, _, schema_after_users, changes), (_, _, schema_after_rows, none) = recorded_rows(database)
    assert changes != "[]" and none == "[]"
    assert schema_after_rows == schema_after_users


def test_every_step_has_a_row_whose_fingerprint_is_the_live_schemas_never_in_history(
        workspace, database, folder):
    (folder / "0002_posts.sql").write_text(POSTS)
    (folder / "0003_title.sql").write_text(
        "-- migrate:up\nCREATE INDEX posts_title ON posts (title);\n"
        "-- migrate:down\nDROP INDEX posts_title"
        + (" ON posts" if database.startswith("mysql://") else "") + ";\n")
    replies = run(workspace, folder, request("migrate", 1), request("rollback", 2, steps=2),
                  request("migrate", 3), request("history", 4), request("dump", 5))
    history, dumped = replies[3], replies[4]
    rows = recorded_rows(database)
    assert len(rows) == len(history["events"]) == 7
    assert [history_seq for _, history_seq, _, _ in rows] == list(range(1, 8))
    assert all("fingerprint" not in event for event in history["events"])
    # Kept step by step, the fingerprint is the one the live schema read whole gives.
    assert rows[-1][2] == dumped["fingerprint"]
    # The schema after the two rollbacks is the one after the first migration.
    assert rows[4][2] == rows[0][2] and rows[1][2] != rows[0][2]
    # Each row holds only what its step changed: the index alone for migration 3.
    assert [name.rpartition(".")[2] for name in changed(rows[-1])] == ["posts_title"]


def test_a_new_worker_reads_the_record_back_and_goes_on_from_it(workspace, database, folder):
    run(workspace, folder, request("migrate", 1))
    assert workspace.kill_worker() is not None
    by_hand(database, drop_index(database))
    (validated,) = run(workspace, folder, request("validate", 2))
    assert any("users_email" in text for text in drift_of(validated))
    by_hand(database, "CREATE INDEX users_email ON users (email)")
    assert workspace.kill_worker() is not None
    (folder / "0002_posts.sql").write_text(POSTS)
    migrated, validated, dumped = run(
        workspace, folder, request("migrate", 3), request("validate", 4), request("dump", 5))
    assert migrated["count"] == 1 and validated["ok"] is True, validated
    rows = recorded_rows(database)
    assert rows[-1][2] == dumped["fingerprint"]
    names = changed(rows[-1])  # the new table (and on MariaDB its key, "posts.PRIMARY")
    assert "posts" in " ".join(names) and not any("users" in name for name in names), names


def test_a_dry_run_records_nothing(workspace, database, folder):
    run(workspace, folder, request("migrate", 1))
    (folder / "0002_rows.sql").write_text(ROWS)
    before = recorded_rows(database)
    (dry,) = run(workspace, folder, request("migrate", 2, dry_run=True))
    assert dry["count"] == 1, dry
    assert recorded_rows(database) == before


def test_a_schemas_table_dropped_by_hand_is_made_again_and_drift_waits_for_a_record(
        workspace, database, folder):
    run(workspace, folder, request("migrate", 1))
    by_hand(database, f"DROP TABLE {SCHEMAS}")
    by_hand(database, "ALTER TABLE users ADD COLUMN nick VARCHAR(20)")
    (validated,) = run(workspace, folder, request("validate", 2))
    assert validated["ok"] is True  # nothing recorded: nothing to differ from
    (folder / "0002_posts.sql").write_text(POSTS)
    migrated, dumped = run(workspace, folder, request("migrate", 3), request("dump", 4))
    assert migrated["count"] == 1
    (row,) = recorded_rows(database)
    assert row[2] == dumped["fingerprint"] and '"nick"' in row[3]  # the whole schema


def test_the_validate_command_prints_each_difference_and_exits_1(workspace, database, folder):
    from tests.test_cli import cli

    run(workspace, folder, request("migrate", 1))
    by_hand(database, "ALTER TABLE users ADD COLUMN nick VARCHAR(20)")
    done = cli(workspace, "validate", folder=folder)
    assert done.returncode == 1, done.stderr
    assert "schema drift" in done.stdout and "users.nick added" in done.stdout
    assert "validation found 1 problem" in done.stderr
    accepted = cli(workspace, "migrate", "--accept-drift", folder=folder)
    assert accepted.returncode == 0, accepted.stderr
    assert cli(workspace, "validate", folder=folder).returncode == 0


# -- in this process: when the catalog is read -----------------------------------------


def engine_on(backend: Backend, root: Path) -> Engine:
    folder = root / "migrations"
    folder.mkdir(exist_ok=True)
    store = backend.store()
    return Engine(store, Catalog(folder, split_statements=store.split_statements))


def counting_reads(monkeypatch, engine: Engine) -> list[int]:
    """A list that grows by one each time the store's schema reader reads the catalog."""
    reader, _, _ = engine.store.schema_reading()
    name = "read_objects" if reader.READS_IN_PART else "read"
    reads: list[int] = []
    read: Callable[..., Any] = getattr(reader, name)

    def counted(*args: Any) -> Any:
        reads.append(1)
        return read(*args)

    monkeypatch.setattr(reader, name, counted)
    return reads


def test_a_step_that_changes_no_schema_is_recorded_without_reading_the_catalog(
        backend, tmp_path, monkeypatch):
    engine = engine_on(backend, tmp_path)
    folder = tmp_path / "migrations"
    (folder / "0001_users.sql").write_text(USERS)
    (folder / "0002_rows.sql").write_text(ROWS)
    (folder / "0003_more.py").write_text(
        "def up(db):\n    db.execute(\"UPDATE users SET email = 'x' WHERE id = 1\")\n\n"
        "def down(db):\n    pass\n")
    reads = counting_reads(monkeypatch, engine)
    reply = engine.migrate(b"r1")
    assert reply["count"] == 3
    assert len(reads) == 1  # the first migration's DDL; the data steps read nothing
    (folder / "0004_posts.sql").write_text(POSTS)
    assert engine.migrate(b"r2")["count"] == 1
    # Its DDL is read, and migrate's drift check reads the catalog on a server (SQLite's
    # stamp says nothing moved since the last read).
    assert len(reads) == (2 if backend.name == "sqlite" else 3)


def test_the_record_kept_step_by_step_equals_the_schema_read_whole(backend, tmp_path):
    engine = engine_on(backend, tmp_path)
    folder = tmp_path / "migrations"
    (folder / "0001_users.sql").write_text(USERS)
    (folder / "0002_posts.sql").write_text(POSTS)
    (folder / "0003_nick.sql").write_text(
        "-- migrate:up\nALTER TABLE users ADD COLUMN nick VARCHAR(20);\n"
        "-- migrate:down\nALTER TABLE users DROP COLUMN nick;\n")
    assert engine.migrate(b"r1")["count"] == 3
    engine.rollback(b"r2")
    recorded = engine.store._recorded()
    assert recorded._objects == objects_of(engine.store.read_schema())
    # A fresh store folds the rows back to the same record.
    fresh = backend.store()
    assert fresh.schema_drift() == []
    assert fresh._recorded()._objects == recorded._objects


def test_a_step_that_commits_while_drift_reads_the_catalog_is_not_taken_for_drift(
        backend, tmp_path, monkeypatch):
    """A reader's session (validate beside a migrate) sees each commit as it lands: a
    rollback committing between its read of the record and its read of the catalog."""
    engine = engine_on(backend, tmp_path)
    folder = tmp_path / "migrations"
    (folder / "0001_users.sql").write_text(USERS)
    (folder / "0002_posts.sql").write_text(POSTS)
    assert engine.migrate(b"r1")["count"] == 2
    reader = backend.store()
    recorded = reader._recorded()
    read = recorded._read
    raced: list[dict] = []

    def racing(*args: Any) -> Any:
        if not raced:
            raced.append(engine.rollback(b"r2"))  # commits between the two reads
        return read(*args)

    monkeypatch.setattr(recorded, "_read", racing)
    assert reader.schema_drift() == []
    assert raced[0]["version"] == 2


def test_the_first_step_records_the_whole_schema_even_when_it_only_moves_data(
        backend, tmp_path):
    """A database whose tables were made before this tool tracked it (or by the tool's
    earlier versions), and a first migration of data only."""
    if backend.name == "postgresql":  # the URL's search_path names a schema of its own
        backend.query(f"CREATE SCHEMA {backend.schema}")
    backend.query("CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(100))")
    engine = engine_on(backend, tmp_path)
    (tmp_path / "migrations" / "0001_rows.sql").write_text(ROWS)
    assert engine.migrate(b"r1")["count"] == 1
    assert backend.store().schema_drift() == []
    assert engine.store._recorded()._objects == objects_of(engine.store.read_schema())


SQLITE_CHANGES = [
    "CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT UNIQUE);"
    " CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a (id))",
    "CREATE INDEX a_x ON a (x); CREATE VIEW v AS SELECT * FROM a;"
    " CREATE TRIGGER tr AFTER INSERT ON a BEGIN INSERT INTO b (a_id) VALUES (new.id); END",
    "INSERT INTO a (id, x) VALUES (1, 'one')",
    "DROP INDEX a_x",
    "ALTER TABLE a RENAME TO a2",  # rewrites b's foreign key, the view and the trigger
    "ALTER TABLE a2 RENAME COLUMN x TO y",
    "DROP VIEW v; DROP TRIGGER tr; CREATE TABLE c AS SELECT 1 AS k",
    "DROP TABLE b; CREATE INDEX c_k ON c (k)",
]


POSTGRES_CHANGES = [
    "CREATE TABLE a (id integer PRIMARY KEY, x text UNIQUE);"
    " CREATE TABLE b (id integer PRIMARY KEY, a_id integer REFERENCES a (id))",
    "CREATE INDEX a_x ON a (x); CREATE VIEW v AS SELECT * FROM a;"
    " CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
    " CREATE TRIGGER tr AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION f()",
    "INSERT INTO a (id, x) VALUES (1, 'one')",
    "ALTER TABLE a ADD COLUMN note text DEFAULT 'n'",
    "ALTER TABLE a RENAME TO a2",  # b's foreign key, the view and the trigger name it
    "ALTER TABLE a2 RENAME COLUMN x TO y",  # the view's text names it
    "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE TABLE c (id serial PRIMARY KEY, m mood)",
    "ALTER TYPE mood ADD VALUE 'happy'; ALTER TABLE c ALTER COLUMN m SET DEFAULT 'ok'",
    "DROP VIEW v; DROP INDEX a_x",  # deletes: read whole
    "CREATE INDEX c_m ON c (m); ALTER TABLE b ADD CONSTRAINT b_id CHECK (id > 0)",
]


MARIADB_CHANGES = [
    "CREATE TABLE a (id INT PRIMARY KEY, x VARCHAR(20) UNIQUE);"
    " CREATE TABLE b (id INT PRIMARY KEY, a_id INT, FOREIGN KEY (a_id) REFERENCES a (id))",
    "CREATE INDEX a_x2 ON a (x, id); CREATE VIEW v AS SELECT * FROM a;"
    " CREATE TRIGGER tr AFTER INSERT ON a FOR EACH ROW SET @n = 1",
    "INSERT INTO a (id, x) VALUES (1, 'one')",
    "ALTER TABLE a ADD COLUMN note VARCHAR(10) DEFAULT 'n'",
    "RENAME TABLE a TO a2",  # b's foreign key and the view name it: read whole
    "ALTER TABLE a2 RENAME COLUMN x TO y",
    "DROP INDEX a_x2 ON a2; CREATE TABLE c (id INT PRIMARY KEY, k INT CHECK (k > 0))",
    "DROP VIEW v; DROP TABLE c",
    "CREATE INDEX b_a ON b (a_id, id); ALTER TABLE b ADD CONSTRAINT b_id CHECK (id > 0)",
]


CHANGES = {"sqlite": SQLITE_CHANGES, "postgresql": POSTGRES_CHANGES, "mariadb": MARIADB_CHANGES}


def test_each_step_reads_only_what_it_changed_and_the_record_stays_the_whole_schema(
        backend, tmp_path):
    """What a step reads: on SQLite the tables its authorizer saw, on PostgreSQL the
    relations whose catalog rows its transaction wrote (and what names them), on MariaDB
    the tables its statements named; a rename or a drop reads everything."""
    engine = engine_on(backend, tmp_path)
    folder = tmp_path / "migrations"
    changes = CHANGES[backend.name]
    for version, statements in enumerate(changes, start=1):
        (folder / f"{version:04d}_change.sql").write_text(
            f"-- migrate:up\n{statements};\n-- migrate:down\n")
    recorded = engine.store._recorded()
    for version in range(1, len(changes) + 1):
        reply = engine.migrate(f"r{version}".encode(), Params({"to": version}))
        assert reply["count"] == 1, reply
        assert recorded._objects == objects_of(engine.store.read_schema()), version
    assert backend.store().schema_drift() == []
