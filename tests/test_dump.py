"""The schema dump: the `dump` request and command, a dump loaded back into an empty database
(the same fingerprint, the same migrations applied), and the dump setting that makes the
migrate and rollback commands rewrite a file. SQLite always; PostgreSQL and MariaDB when a
server answers and its dump program is on PATH, else skipped saying why."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import endpoint
from broker.errors import PRECONDITION_FAILED, ReplyError
from tests.processes import gone
from tests.support import write_migration
from tests.test_cli import cli
from worker.dump.tools import find_tool
from worker.schema import sqlite as sqlite_schema
from worker.schema.shape import fingerprint
from worker.stores.interface import tracking_tables

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
MARIADB_HOST, MARIADB_PORT = "127.0.0.1", 3306


def sqlite_migrations(folder: Path) -> None:
    """A table with an index, a view and a trigger that read it, then the table rebuilt (the
    12-step ALTER), so that it comes after the view in sqlite_master."""
    write_migration(folder, "0001_users.py", """
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
        db.execute("CREATE UNIQUE INDEX users_email ON users (email)")
    """, down='db.execute("DROP TABLE users")')
    write_migration(folder, "0002_audit.py", """
        db.execute("CREATE TABLE audit (user_id INTEGER NOT NULL)")
        db.execute("CREATE VIEW user_emails AS SELECT email FROM users")
        db.execute("CREATE TRIGGER users_audit AFTER INSERT ON users"
                   " BEGIN INSERT INTO audit (user_id) VALUES (new.id); END")
    """, down="""
        db.execute("DROP TRIGGER users_audit")
        db.execute("DROP VIEW user_emails")
        db.execute("DROP TABLE audit")
    """)
    write_migration(folder, "0003_user_names.py", """
        db.execute("PRAGMA legacy_alter_table = ON")  # the view that reads users stays as it is
        db.execute("CREATE TABLE users_new (id INTEGER PRIMARY KEY, email TEXT NOT NULL,"
                   " name TEXT NOT NULL DEFAULT 'it''s me')")
        db.execute("INSERT INTO users_new (id, email) SELECT id, email FROM users")
        db.execute("DROP TABLE users")
        db.execute("ALTER TABLE users_new RENAME TO users")
        db.execute("CREATE UNIQUE INDEX users_email ON users (email)")
        db.execute("CREATE TRIGGER users_audit AFTER INSERT ON users"
                   " BEGIN INSERT INTO audit (user_id) VALUES (new.id); END")
    """, down=None)


def ask(workspace, folder: Path, *args: str, env: dict | None = None) -> dict:
    """The reply a command prints with --json."""
    done = cli(workspace, *args, "--json", folder=folder, env=env)
    return json.loads(done.stdout)


def applied(workspace, folder: Path) -> list[tuple[int, bool]]:
    status = ask(workspace, folder, "status")
    return [(m["version"], m["applied"]) for m in status["migrations"]]


# -- SQLite ---------------------------------------------------------------------------------


def test_a_sqlite_dump_loaded_into_an_empty_database_gives_the_same_schema_and_versions(
    workspace, folder, tmp_path
):
    sqlite_migrations(folder)
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    body = ask(workspace, folder, "dump")
    assert body["type"] == "schema_dump" and body["in_reply_to"] == 1
    with sqlite3.connect(workspace.db) as live:
        assert body["fingerprint"] == fingerprint(sqlite_schema.read(live, tracking_tables()))
        order = [name for (name,) in live.execute("SELECT name FROM sqlite_master ORDER BY rowid")]
    assert order.index("user_emails") < order.index("users")  # the rebuilt table came after
    sql = body["sql"]
    assert sql.index('CREATE TABLE "users"') < sql.index("CREATE VIEW user_emails")
    assert "sqlite_" not in sql and sql.endswith(";\n")
    assert sql.count("INSERT INTO \"schema_migrations\"") == 3

    loaded = tmp_path / "loaded.db"
    connection = sqlite3.connect(loaded)
    connection.executescript(sql)
    assert fingerprint(sqlite_schema.read(connection, tracking_tables())) == body["fingerprint"]
    connection.close()
    workspace.db = loaded
    assert applied(workspace, folder) == [(1, True), (2, True), (3, True)]
    again = ask(workspace, folder, "dump")
    assert again == body  # the same text: the schema, the order and the rows
    done = cli(workspace, "migrate", folder=folder)
    assert done.stdout == "nothing to do: the database is already there\n"


def test_a_dump_of_a_database_with_nothing_applied_is_empty(workspace, folder):
    body = ask(workspace, folder, "dump")
    assert body["sql"] == "" and body["fingerprint"].startswith("schema-sha256:")


def test_the_dump_command_prints_the_sql_or_writes_the_file_in_one_rename(workspace, folder):
    sqlite_migrations(folder)
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    printed = cli(workspace, "dump", folder=folder)
    assert printed.returncode == 0, printed.stderr
    (workspace.root / "db").mkdir()
    target = workspace.root / "db" / "schema.sql"
    target.write_text("old")
    os.chmod(target, 0o640)
    written = cli(workspace, "dump", "--output", "db/schema.sql", folder=folder)
    assert written.returncode == 0, written.stderr
    assert written.stdout.startswith("wrote the schema dump db/schema.sql (schema-sha256:")
    assert target.read_text() == printed.stdout == ask(workspace, folder, "dump")["sql"]
    assert os.stat(target).st_mode & 0o777 == 0o640  # the file's own permissions kept
    assert os.listdir(target.parent) == ["schema.sql"]  # no temporary file left


def test_the_dump_command_says_why_it_cannot_write_the_file(workspace, folder):
    sqlite_migrations(folder)
    done = cli(workspace, "dump", "--output", "nowhere/schema.sql", folder=folder)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("error: cannot write the schema dump nowhere/schema.sql: No such file"
                           " or directory\n")


def project_with_dump(workspace) -> Path:
    (workspace.root / "pyproject.toml").write_text(
        '[tool.migrations-node]\ndump = "db/schema.sql"\n')
    (workspace.root / "db").mkdir()
    return workspace.root / "db" / "schema.sql"


def test_the_dump_setting_rewrites_the_file_after_migrate_and_after_rollback(workspace, folder):
    sqlite_migrations(folder)
    target = project_with_dump(workspace)
    done = cli(workspace, "migrate", "--to", "2", folder=folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(f"wrote the schema dump {target} (")
    assert target.read_text() == ask(workspace, folder, "dump")["sql"]
    assert "VALUES (2, 'audit'" in target.read_text()

    assert cli(workspace, "rollback", folder=folder).returncode == 0
    assert "VALUES (2, 'audit'" not in target.read_text()
    assert "user_emails" not in target.read_text()
    assert target.read_text() == ask(workspace, folder, "dump")["sql"]

    json_migrate = ask(workspace, folder, "migrate")  # --json: stdout holds the reply alone
    assert json_migrate["count"] == 2
    assert "VALUES (3, 'user_names'" in target.read_text()


def test_the_dump_setting_leaves_the_file_after_a_run_that_changed_nothing(workspace, folder):
    sqlite_migrations(folder)
    target = project_with_dump(workspace)
    assert cli(workspace, "migrate", "--dry-run", folder=folder).returncode == 0
    assert not target.exists()
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    target.unlink()
    done = cli(workspace, "migrate", folder=folder)
    assert done.stdout == "nothing to do: the database is already there\n"
    assert not target.exists()


def test_the_dump_setting_comes_from_the_environment_and_the_command_line_too(workspace, folder):
    sqlite_migrations(folder)
    env = {**workspace.env, "MIGRATIONS_DUMP": "from-env.sql"}
    config = cli(workspace, "config", env=env)
    assert any(line.split()[:3] == ["dump", "from-env.sql", "MIGRATIONS_DUMP"]
               for line in config.stdout.splitlines())
    assert cli(workspace, "migrate", "--to", "1", folder=folder, env=env).returncode == 0
    assert "VALUES (1, 'users'" in (workspace.root / "from-env.sql").read_text()
    done = cli(workspace, "--dump", "given.sql", "migrate", folder=folder, env=env)
    assert done.returncode == 0, done.stderr
    assert "VALUES (3, 'user_names'" in (workspace.root / "given.sql").read_text()


def test_the_stdio_node_never_writes_the_dump_file(workspace, folder):
    sqlite_migrations(folder)
    line = {"body": {"type": "migrate", "msg_id": 1}}
    replies, done = workspace.run([line], "--migrations", str(folder), "--dump", "never.sql")
    assert replies[0]["count"] == 3, done.stderr
    assert not (workspace.root / "never.sql").exists()


def test_a_missing_dump_program_is_error_22_naming_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ReplyError) as raised:
        find_tool(("mariadb-dump", "mysqldump"), "mariadb-client")
    assert raised.value.code == PRECONDITION_FAILED
    assert raised.value.text == ("a dump needs mariadb-dump or mysqldump, which is not on PATH"
                                 " (''): install the mariadb-client package")


def test_literals_read_the_same_in_every_sql_mode():
    from worker.dump import mariadb, postgres
    from worker.dump import sqlite as sqlite_dump

    for backend in (sqlite_dump, postgres, mariadb):
        assert backend.literal(None) == "NULL" and backend.literal(1.5) == "1.5"
        assert backend.literal("it's") == "'it''s'"
    assert mariadb.literal("a\\b") == "_utf8mb4 X'615c62'"  # NO_BACKSLASH_ESCAPES or not
    assert postgres.literal("a\\b") == "'a\\b'"


# -- PostgreSQL and MariaDB ------------------------------------------------------------------


def kill_worker(database: str) -> None:
    pid = endpoint.read_owner(endpoint.for_database(database).lock_path).pid
    if pid is not None and not gone(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def postgres(workspace, monkeypatch) -> Iterator[tuple[str, str]]:
    """Two fresh databases on the server (the workspace's --db, and one to load a dump
    into), dropped at the end."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, workspace.env[endpoint.RUNTIME_DIR_ENV])
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    names = [f"mn_dump_{secrets.token_hex(6)}" for _ in range(2)]
    for name in names:
        admin.execute(f"CREATE DATABASE {name}")
    urls = [f"{PG_SERVER}/{name}" for name in names]
    workspace.db = urls[0]
    try:
        yield urls[0], urls[1]
    finally:
        for url in urls:
            kill_worker(url)
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


PG_MIGRATION = """-- migrate:up
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE people (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     name text NOT NULL, mood mood NOT NULL DEFAULT 'ok');
CREATE INDEX people_name ON people (lower(name));
CREATE VIEW happy_people AS SELECT name FROM people WHERE mood = 'happy';
CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$;
CREATE TRIGGER people_shout BEFORE INSERT ON people FOR EACH ROW EXECUTE FUNCTION shout();
-- migrate:down
DROP TABLE people;
DROP FUNCTION shout();
DROP TYPE mood;
"""


def test_a_postgresql_dump_loaded_into_an_empty_database_gives_the_same_schema_and_versions(
    workspace, folder, postgres
):
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not on PATH (the postgresql-client package)")
    import psycopg

    target = postgres[1]
    (folder / "0001_people.sql").write_text(PG_MIGRATION)
    (folder / "0002_note.sql").write_text(
        "-- migrate:up\nALTER TABLE people ADD COLUMN note text;\n"
        "-- migrate:down\nALTER TABLE people DROP COLUMN note;\n")
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    body = ask(workspace, folder, "dump")
    assert body["type"] == "schema_dump", body
    sql = body["sql"]
    assert "\\restrict" not in sql and "CREATE TABLE public.people" in sql
    assert 'INSERT INTO "public"."schema_migrations"' in sql
    with psycopg.connect(target, autocommit=True) as connection:
        connection.execute(sql)
    workspace.db = target
    assert applied(workspace, folder) == [(1, True), (2, True)]
    again = ask(workspace, folder, "dump")
    assert again["fingerprint"] == body["fingerprint"]
    assert again["sql"] == sql


def test_a_postgresql_dump_without_pg_dump_on_path_is_error_22(workspace, folder, postgres):
    env = {**workspace.env, "PATH": ""}  # the worker the first node starts inherits it
    assert cli(workspace, "migrate", folder=folder, env=env).returncode == 0
    body = ask(workspace, folder, "dump", env=env)
    assert body["type"] == "error" and body["code"] == 22
    assert body["text"] == ("a dump needs pg_dump, which is not on PATH (''): install the"
                            " postgresql-client package")
    done = cli(workspace, "dump", folder=folder, env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error 22: {body['text']}\n"


@pytest.fixture
def mariadb(workspace, monkeypatch) -> Iterator[tuple[str, str]]:
    """Two fresh databases on the server (the workspace's --db, and one to load a dump
    into), dropped at the end."""
    pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed")
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, workspace.env[endpoint.RUNTIME_DIR_ENV])
    try:
        admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="",
                                autocommit=True, connect_timeout=5)
    except pymysql.Error as exc:
        pytest.skip(f"no MariaDB server at {MARIADB_HOST}:{MARIADB_PORT}: {exc}")
    names = [f"mn_dump_{secrets.token_hex(6)}" for _ in range(2)]
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"CREATE DATABASE {name}")
    urls = [f"mysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}" for name in names]
    workspace.db = urls[0]
    try:
        yield urls[0], urls[1]
    finally:
        for url in urls:
            kill_worker(url)
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


MARIADB_MIGRATION = """-- migrate:up
CREATE TABLE people (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(255) NOT NULL,
                     note TEXT, KEY people_name (name));
INSERT INTO people (name) VALUES ('a'), ('b');
CREATE VIEW named AS SELECT name FROM people;
CREATE TRIGGER people_upper BEFORE INSERT ON people FOR EACH ROW SET NEW.name = UPPER(NEW.name);
-- migrate:down
DROP VIEW named;
DROP TABLE people;
"""


def test_a_mariadb_dump_loaded_into_an_empty_database_gives_the_same_schema_and_versions(
    workspace, folder, mariadb
):
    dump_tool = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if dump_tool is None or client is None:
        pytest.skip("mariadb-dump (or mysqldump) and the mariadb client are not both on PATH"
                    " (the mariadb-client package)")
    target = mariadb[1]
    (folder / "0001_people.sql").write_text(MARIADB_MIGRATION)
    write_migration(folder, "0002_nothing.py", "pass")
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    body = ask(workspace, folder, "dump")
    assert body["type"] == "schema_dump", body
    sql = body["sql"]
    assert "AUTO_INCREMENT=" not in sql and "CREATE TABLE `people`" in sql
    assert "VALUES (2, 'nothing'" in sql
    subprocess.run([client, "--no-defaults", f"--host={MARIADB_HOST}", f"--port={MARIADB_PORT}",
                    "--protocol=TCP", "--user=root", target.rsplit("/", 1)[1]],
                   input=sql, text=True, check=True, capture_output=True, timeout=60)
    workspace.db = target
    assert applied(workspace, folder) == [(1, True), (2, True)]
    again = ask(workspace, folder, "dump")
    assert again["fingerprint"] == body["fingerprint"]


def test_a_mariadb_dump_without_the_dump_program_on_path_is_error_22(workspace, folder, mariadb):
    env = {**workspace.env, "PATH": ""}
    body = ask(workspace, folder, "dump", env=env)
    assert body["type"] == "error" and body["code"] == 22
    assert body["text"] == ("a dump needs mariadb-dump or mysqldump, which is not on PATH (''):"
                            " install the mariadb-client package")
