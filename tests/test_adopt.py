"""adopt, end to end on SQLite and PostgreSQL: another tool's tracking table, as that tool
leaves it (built by tests/tool_tables.py, or left by dbmate and sql-migrate themselves when
they are installed), read and recorded as ours, the other table never written.

Most tests keep dbmate-format .sql (and .py) files here with the versions the other tool's
files have (golang-migrate's 1_x.up.sql, goose's 00001_x.sql and Flyway's V1__x.sql are
version 1); test_the_tools_own_files_are_matched_by_their_versions, and the real tools', use
each tool's own files, which the catalog reads as they are (worker/readers).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker import endpoint
from tests import tool_binaries, tool_tables
from tests.backends import PG_SERVER, postgres_answers
from tests.support import NODE, PROCESS_TIMEOUT_S, request, write_migration
from tests.test_cli import cli

TOOL_TABLE = {"golang-migrate": "schema_migrations", "goose": "goose_db_version",
              "flyway": "flyway_schema_history", "sql-migrate": "gorp_migrations",
              "dbmate": "schema_migrations"}
SHARED_NAME = {"golang-migrate", "dbmate"}  # their table has our default table's name
TIME = "2024-05-01T10:00:00.250Z"  # when the tools below applied their migrations


class Database:
    """The test's database as another program sees it: `execute` and `rows` take `?`
    placeholders on both backends; `arg` is what --db names it by."""

    def __init__(self, kind: str, arg: str, connection: Any) -> None:
        self.kind = kind
        self.arg = arg
        self._connection = connection

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.rows(sql, params)

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.kind == "postgresql":
            cursor = self._connection.execute(sql.replace("?", "%s"), params or None)
            return cursor.fetchall() if cursor.description is not None else []
        with closing(sqlite3.connect(self.arg, isolation_level=None)) as connection:
            return connection.execute(sql, params).fetchall()

    def label(self, table: str) -> str:
        """How replies and texts name a table: in `public` on the server."""
        return f"public.{table}" if self.kind == "postgresql" else table

    def tables(self) -> set[str]:
        if self.kind == "postgresql":
            found = self.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        else:
            found = self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in found}

    def snapshot(self) -> dict[str, Any]:
        """Every object (tables, indexes) and every row of every table: to compare."""
        if self.kind == "postgresql":
            objects = self.rows("SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace"
                                " n ON n.oid = c.relnamespace WHERE n.nspname = 'public'")
        else:
            objects = self.rows("SELECT type, name, sql FROM sqlite_master")
        contents = {table: sorted(self.rows(f'SELECT * FROM "{table}"'), key=repr)
                    for table in self.tables()}
        return {"objects": sorted(objects, key=repr), "rows": contents}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, workspace, monkeypatch) -> Iterator[Database]:
    """The test's database, which the workspace's nodes use as --db: a SQLite file, or a
    new database on the server (its time zone UTC unless the test sets another)."""
    if request.param == "sqlite":
        workspace.db = workspace.root / "app.db"
        yield Database("sqlite", str(workspace.db), None)
        return
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (extra: postgres)")
    if not postgres_answers():
        pytest.skip("no PostgreSQL server answers at 127.0.0.1:5432")
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, workspace.env[endpoint.RUNTIME_DIR_ENV])
    admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
    name = f"mn_adopt_{secrets.token_hex(6)}"
    admin.execute(f"CREATE DATABASE {name}")
    admin.execute(f"ALTER DATABASE {name} SET timezone TO 'UTC'")
    url = f"{PG_SERVER}/{name}"
    workspace.db = url
    connection = psycopg.connect(url, autocommit=True)
    try:
        yield Database("postgresql", url, connection)
    finally:
        connection.close()
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def folder(workspace) -> Path:
    path = workspace.root / "migrations"
    path.mkdir()
    return path


def sql_migrations(folder: Path, versions: range) -> None:
    """dbmate-format files that each create (and drop) one table, t<version>."""
    for version in versions:
        (folder / f"{version:04d}_t{version}.sql").write_text(
            f"-- migrate:up\nCREATE TABLE t{version} (id integer);\n\n"
            f"-- migrate:down\nDROP TABLE t{version};\n")


def settled(folder: Path) -> None:
    """The folder and its files as if written an hour ago: past the window in which the
    worker trusts no listing (catalog.RACY_WINDOW_NS), so it keeps what it computes."""
    an_hour_ago = time.time() - 3600
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (an_hour_ago, an_hour_ago))


def schema_of(db: Database, versions: range) -> None:
    """The tables migrations `versions` made, as the other tool left them."""
    for version in versions:
        db.execute(f"CREATE TABLE t{version} (id integer)")


def left_by(tool: str, db: Database, versions: range) -> str | None:
    """The tool's table as the tool leaves it once it applied `versions` (from 1, in
    order), and their tables; returns the time each was applied at, as adopt records it
    (None: the tool keeps none)."""
    schema_of(db, versions)
    newest = max(versions, default=0)
    if tool == "golang-migrate":
        tool_tables.golang_migrate(db, newest or None)
        return None
    if tool == "goose":
        tool_tables.goose(db, [(v, True) for v in versions], tstamp="2024-05-01 10:00:00.250")
    elif tool == "flyway":
        tool_tables.flyway(db, [(str(v), "SQL", f"V{v}__t{v}.sql", True) for v in versions])
        db.execute("UPDATE flyway_schema_history SET installed_on = ?",
                   ("2024-05-01 10:00:00.250",))  # as if it ran then
    elif tool == "sql-migrate":
        # go-sqlite3 writes a time.Time with nanoseconds; PostgreSQL keeps a timestamptz.
        at = ("2024-05-01 12:00:00.250123456+02:00" if db.kind == "sqlite"
              else "2024-05-01 12:00:00.250123+02")
        tool_tables.sql_migrate(db, [f"{v}_t{v}.sql" for v in versions], at)
    else:
        tool_tables.dbmate(db, [f"{v:04d}" for v in versions])
        return None
    return TIME


def tool_rows(db: Database, tool: str) -> list[tuple]:
    return sorted(db.rows(f"SELECT * FROM {TOOL_TABLE[tool]}"), key=repr)


def lines(done: subprocess.CompletedProcess) -> list[str]:
    return done.stdout.splitlines()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def adopted_events(workspace, folder: Path) -> list[dict]:
    done = cli(workspace, "history", "--json", folder=folder)
    return [e for e in json.loads(done.stdout)["events"] if e["action"] == "adopt"]


# -- each tool ---------------------------------------------------------------------------


@pytest.mark.parametrize("tool", list(TOOL_TABLE))
def test_adopt_records_what_the_tool_applied_and_migrate_applies_only_the_rest(
        workspace, db, folder, tool):
    sql_migrations(folder, range(1, 4))
    applied_at = left_by(tool, db, range(1, 3))
    theirs = tool_rows(db, tool)
    before = utc_now()
    done = cli(workspace, "adopt", "--from", tool, folder=folder)
    after = utc_now()
    assert done.returncode == 0, done.stderr
    when = f"  applied {applied_at}" if applied_at else ""
    assert lines(done)[:3] == [
        f"adopted  1  t1{when}", f"adopted  2  t2{when}",
        f"2 migrations adopted from {tool}'s {TOOL_TABLE[tool]}: recorded as applied, none"
        " of them run"]
    ours = "migrations_node" if tool in SHARED_NAME else "schema_migrations"
    assert ours in db.tables() and tool_rows(db, tool) == theirs
    status = cli(workspace, "status", folder=folder)
    assert [line.split()[:3] for line in lines(status)[1:4]] == [
        ["1", "t1", "applied"], ["2", "t2", "applied"], ["3", "t3", "pending"]]
    events = adopted_events(workspace, folder)
    assert [e["version"] for e in events] == [1, 2]
    for event in events:  # the tool's own time, or the moment of adopt when it keeps none
        assert event["started_at"] == applied_at or before <= event["started_at"] <= after
    migrated = cli(workspace, "migrate", folder=folder)
    assert migrated.returncode == 0, migrated.stderr
    assert [line.split()[:3] for line in lines(migrated)[:-1]] == [["applied", "3", "t3"]]
    assert "t3" in db.tables() and tool_rows(db, tool) == theirs


@pytest.mark.parametrize("tool", list(TOOL_TABLE))
def test_a_dry_run_shows_what_would_be_recorded_and_changes_nothing(
        workspace, db, folder, tool):
    sql_migrations(folder, range(1, 4))
    left_by(tool, db, range(1, 3))
    before = db.snapshot()
    done = cli(workspace, "adopt", "--from", tool, "--dry-run", folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split("  ")[:3] for line in lines(done)[:2]] == [
        ["would be adopted", "1", "t1"], ["would be adopted", "2", "t2"]]
    assert lines(done)[2] == (f"2 migrations would be adopted from {tool}'s"
                              f" {TOOL_TABLE[tool]} (dry run: nothing recorded)")
    assert db.snapshot() == before


# Each tool's own files for version V (creating table tV), and how its table names V.
OWN_FILES = {
    "golang-migrate": lambda v: {f"{v}_t{v}.up.sql": f"CREATE TABLE t{v} (id integer);\n",
                                 f"{v}_t{v}.down.sql": f"DROP TABLE t{v};\n"},
    "goose": lambda v: {f"{v:05d}_t{v}.sql": f"-- +goose Up\nCREATE TABLE t{v} (id integer);\n"
                                            f"-- +goose Down\nDROP TABLE t{v};\n"},
    "flyway": lambda v: {f"V{v}__t{v}.sql": f"CREATE TABLE t{v} (id integer);\n",
                         f"U{v}__t{v}.sql": f"DROP TABLE t{v};\n"},
    "sql-migrate": lambda v: {f"{v}_t{v}.sql": f"-- +migrate Up\nCREATE TABLE t{v} (id integer);"
                                              f"\n-- +migrate Down\nDROP TABLE t{v};\n"},
    "dbmate": lambda v: {f"{20240501100000 + v}_t{v}.sql":
                         f"-- migrate:up\nCREATE TABLE t{v} (id integer);\n"
                         f"-- migrate:down\nDROP TABLE t{v};\n"},
}


@pytest.mark.parametrize("tool", list(TOOL_TABLE))
def test_the_tools_own_files_are_matched_by_their_versions(workspace, db, folder, tool):
    for version in range(1, 4):
        for name, text in OWN_FILES[tool](version).items():
            (folder / name).write_text(text)
    if tool == "dbmate":  # dbmate's versions are the timestamps its file names start with
        schema_of(db, range(1, 3))
        tool_tables.dbmate(db, ["20240501100001", "20240501100002"])
        versions = [20240501100001, 20240501100002, 20240501100003]
    else:
        left_by(tool, db, range(1, 3))
        versions = [1, 2, 3]
    done = cli(workspace, "adopt", "--from", tool, folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:3] for line in lines(done)[:2]] == [
        ["adopted", str(versions[0]), "t1"], ["adopted", str(versions[1]), "t2"]]
    assert cli(workspace, "validate", folder=folder).returncode == 0  # checksums of its files
    migrated = cli(workspace, "migrate", folder=folder)
    assert [line.split()[:3] for line in lines(migrated)[:-1]] == [
        ["applied", str(versions[2]), "t3"]], migrated.stderr
    rolled = cli(workspace, "rollback", "--steps", "3", folder=folder)
    assert rolled.returncode == 0, rolled.stderr  # their down files, as ours
    assert not {"t1", "t2", "t3"} & db.tables()


# -- refusals: each names what is wrong, and changes nothing ------------------------------


def refused(workspace, db: Database, folder: Path, tool: str, *args: str) -> str:
    """Run adopt, expecting a refusal that changed nothing; returns its stderr."""
    before = db.snapshot()
    done = cli(workspace, "adopt", "--from", tool, *args, folder=folder)
    assert done.returncode == 1, done.stdout
    assert done.stdout == "" and db.snapshot() == before
    return done.stderr.strip()


def test_a_dirty_golang_migrate_table_is_refused(workspace, db, folder):
    sql_migrations(folder, range(1, 4))
    schema_of(db, range(1, 3))
    tool_tables.golang_migrate(db, 3, dirty=True)
    said = refused(workspace, db, folder, "golang-migrate")
    assert said == (
        "error 22: adopt from golang-migrate refused, so nothing was recorded:"
        " golang-migrate's schema_migrations is dirty at version 3: a migration failed"
        " partway and golang-migrate stopped there; repair the schema by hand, then record"
        " the version it is really at with `migrate force V`")
    refused(workspace, db, folder, "golang-migrate", "--dry-run")


def test_a_flyway_row_with_success_false_is_refused(workspace, db, folder):
    sql_migrations(folder, range(1, 4))
    schema_of(db, range(1, 2))
    tool_tables.flyway(db, [("1", "SQL", "V1__t1.sql", True), ("2", "SQL", "V2__t2.sql", False)])
    said = refused(workspace, db, folder, "flyway")
    assert said == (
        "error 22: adopt from flyway refused, so nothing was recorded: flyway_schema_history"
        " row 2 (SQL V2__t2.sql) has success = false: that run failed; repair the schema,"
        " then `flyway repair` removes the row")


def test_a_version_the_tool_applied_that_no_file_here_has_is_refused(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    tool_tables.goose(db, [(1, True), (2, True), (3, True)])
    said = refused(workspace, db, folder, "goose")
    assert said.endswith("version 3 is applied in goose's"
                         f" {db.label('goose_db_version')}, but no migration file here has"
                         " that version")


def test_a_file_the_tool_never_applied_below_one_it_did_is_refused_as_out_of_order(
        workspace, db, folder):
    sql_migrations(folder, range(1, 4))
    tool_tables.sql_migrate(db, ["1_t1.sql", "3_t3.sql"], "2024-05-01 10:00:00+00:00")
    said = refused(workspace, db, folder, "sql-migrate")
    assert said.endswith("migration 2 t2 here was never applied by sql-migrate although"
                         " version 3 was (out of order)")


def test_every_problem_is_named_at_once_in_the_request_reply(workspace, db, folder):
    sql_migrations(folder, range(1, 4))
    tool_tables.flyway(db, [("1", "SQL", "V1__t1.sql", True), ("3", "SQL", "V3__t3.sql", True),
                            ("4", "SQL", "V4__x.sql", False), ("5", "SQL", "V5__y.sql", True)])
    replies, _ = workspace.run([request("adopt", 1, **{"from": "flyway"})],
                               "--migrations", str(folder))
    (reply,) = replies
    assert reply["code"] == 22
    assert [(p["kind"], p["version"]) for p in reply["problems"]] == [
        ("failed", 4), ("out_of_order", 2), ("missing", 5)]
    assert "schema_migrations" not in db.tables()


def test_adopt_is_refused_where_this_tool_has_records_already(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    assert cli(workspace, "migrate", "--to", "1", folder=folder).returncode == 0
    tool_tables.goose(db, [(1, True)])
    said = refused(workspace, db, folder, "goose")
    assert said.endswith("adopt is for a database with nothing recorded by this tool, and 1"
                         f" migrations are recorded in {db.label('schema_migrations')}")


def test_a_tool_table_that_is_not_there_or_is_another_tools_is_refused(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    tool_tables.dbmate(db, ["0001"])
    said = refused(workspace, db, folder, "goose")
    assert said.endswith(f"{db.label('goose_db_version')} does not exist, so goose applied"
                         " nothing here")
    said = refused(workspace, db, folder, "golang-migrate")
    assert said.endswith(f"{db.label('schema_migrations')} is not golang-migrate's table"
                         " schema_migrations(version, dirty): its columns are version; it is"
                         " dbmate's: adopt --from dbmate")


# -- what each tool's table means ----------------------------------------------------------


def test_goose_row_0_is_its_own_and_the_latest_row_of_a_version_decides(
        workspace, db, folder):
    sql_migrations(folder, range(1, 4))
    schema_of(db, range(1, 2))
    # 1 applied; 2 applied then rolled back (older goose's row with is_applied false).
    tool_tables.goose(db, [(1, True), (2, True), (2, False)])
    done = cli(workspace, "adopt", "--from", "goose", folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:3] for line in lines(done)[:1]] == [["adopted", "1", "t1"]]
    assert lines(done)[1].startswith("1 migration adopted from goose's goose_db_version")


def test_golang_migrate_keeps_its_newest_version_and_every_file_up_to_it_counts(
        workspace, db, folder):
    sql_migrations(folder, range(1, 6))
    schema_of(db, range(1, 4))
    tool_tables.golang_migrate(db, 3)
    done = cli(workspace, "adopt", "--from", "golang-migrate", folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split() for line in lines(done)[:3]] == [
        ["adopted", "1", "t1"], ["adopted", "2", "t2"], ["adopted", "3", "t3"]]
    status = json.loads(cli(workspace, "status", "--json", folder=folder).stdout)
    assert [m["applied"] for m in status["migrations"]] == [True, True, True, False, False]


def test_golang_migrate_with_no_version_applied_nothing(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    tool_tables.golang_migrate(db, None)  # `migrate` made its table, and ran nothing yet
    done = cli(workspace, "adopt", "--from", "golang-migrate", folder=folder)
    assert done.returncode == 0, done.stderr
    assert lines(done)[0] == ("0 migrations adopted from golang-migrate's schema_migrations:"
                              " recorded as applied, none of them run")
    migrated = cli(workspace, "migrate", folder=folder)
    assert migrated.returncode == 0 and {"t1", "t2"} <= db.tables()


def test_flyway_baseline_undo_repeatable_and_schema_rows_mean_what_flyway_means(
        workspace, db, folder):
    sql_migrations(folder, range(1, 5))
    (folder / "R__repeated.sql").write_text("CREATE TABLE IF NOT EXISTS repeated (id integer);\n")
    schema_of(db, range(1, 3))
    tool_tables.flyway(db, [
        ("0", "SCHEMA", '"public"', True),  # Flyway created the schema
        ("1", "BASELINE", "<< Flyway Baseline >>", True),  # 1 and below were there
        ("2", "SQL", "V2__t2.sql", True),
        (None, "SQL", "R__repeated.sql", True),  # a repeatable migration: no version
        ("3", "SQL", "V3__t3.sql", True),
        ("3", "UNDO_SQL", "U3__t3.sql", True),  # 3 taken back
    ])
    done = cli(workspace, "adopt", "--from", "flyway", folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:3] for line in lines(done)[:2]] == [
        ["adopted", "1", "t1"], ["adopted", "2", "t2"]]
    migrated = cli(workspace, "migrate", folder=folder)
    # A repeatable one is not recorded by adopt: it runs once, after the versioned ones.
    assert [line.split()[:3] for line in lines(migrated)[:3]] == [
        ["applied", "3", "t3"], ["applied", "4", "t4"], ["applied", "R", "repeated"]]


def test_a_py_migration_is_adopted_with_the_checksum_of_its_file(workspace, db, folder):
    write_migration(folder, "0001_create_a.py", 'db.execute("CREATE TABLE a (id integer)")')
    db.execute("CREATE TABLE a (id integer)")
    tool_tables.goose(db, [(1, True)])
    assert cli(workspace, "adopt", "--from", "goose", folder=folder).returncode == 0
    done = cli(workspace, "validate", folder=folder)
    assert done.returncode == 0, done.stderr
    (folder / "0001_create_a.py").write_text("def up(db):\n    pass\n")
    assert cli(workspace, "validate", folder=folder).returncode == 1  # it was the file's


def test_a_naive_postgresql_timestamp_is_read_in_the_servers_time_zone(workspace, db, folder):
    if db.kind != "postgresql":
        pytest.skip("SQLite keeps goose's tstamp as UTC text (datetime('now'))")
    db.execute(f"ALTER DATABASE {db.arg.rpartition('/')[2]} SET timezone TO"
               " 'America/New_York'")
    sql_migrations(folder, range(1, 2))
    schema_of(db, range(1, 2))
    tool_tables.goose(db, [(1, True)], tstamp="2024-05-01 06:00:00")  # 10:00 UTC, EDT
    done = cli(workspace, "adopt", "--from", "goose", folder=folder)
    assert lines(done)[0] == "adopted  1  t1  applied 2024-05-01T10:00:00.000Z", done.stderr


# -- the table both tools name schema_migrations -------------------------------------------


@pytest.mark.parametrize("tool", sorted(SHARED_NAME))
def test_before_adopt_a_node_never_takes_the_tools_table_for_its_own(
        workspace, db, folder, tool):
    sql_migrations(folder, range(1, 3))
    settled(folder)  # so that the worker would keep a status reply: it must keep none
    left_by(tool, db, range(1, 2))
    before = db.snapshot()
    for command in ("status", "status", "migrate", "validate", "status"):
        done = cli(workspace, command, folder=folder)
        assert done.returncode == 1, (command, done.stdout)
        assert done.stderr.startswith(f"error 22: {db.label('schema_migrations')} is {tool}'s"
                                      " tracking table"), done.stderr
        assert f"run `migrations-node adopt --from {tool}`" in done.stderr
    assert db.snapshot() == before  # nothing created, nothing written


@pytest.mark.parametrize("tool", sorted(SHARED_NAME))
def test_after_adopt_nodes_given_no_table_find_ours_beside_the_tools(
        workspace, db, folder, tool):
    sql_migrations(folder, range(1, 3))
    left_by(tool, db, range(1, 2))
    theirs = tool_rows(db, tool)
    done = cli(workspace, "adopt", "--from", tool, folder=folder)
    assert done.returncode == 0, done.stderr
    assert lines(done)[2] == ("tracking in migrations_node: schema_migrations keeps"
                              f" {tool}'s records, never written by this tool")
    assert lines(done)[3].startswith("nodes given no --table find migrations_node")
    # A new worker, with nothing but the database to go by:
    assert cli(workspace, "stop").returncode == 0
    config = cli(workspace, "config", folder=folder)
    row = next(line for line in lines(config) if line.startswith("table "))
    assert row.split(None, 2) == ["table", "schema_migrations", "default; migrations_node where"
                                  " another tool's table has this name (found in the database)"]
    health = json.loads(cli(workspace, "health", "--json", folder=folder).stdout)
    assert health["tracking_table"] == db.label("migrations_node")
    assert health["renamed_because"] == (f"{db.label('schema_migrations')} is another"
                                         " tool's table, left as it is")
    replies, _ = workspace.run([request("status", 1)], "--migrations", str(folder))
    assert [m["applied"] for m in replies[0]["migrations"]] == [True, False]
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    named = cli(workspace, "--table", "migrations_node", "status", folder=folder)
    assert named.returncode == 0 and lines(named)[-1] == "2 applied, 0 pending"
    assert tool_rows(db, tool) == theirs
    # Once the team drops the tool's table, ours is still found.
    db.execute("DROP TABLE schema_migrations")
    assert cli(workspace, "stop").returncode == 0
    status = cli(workspace, "status", folder=folder)
    assert lines(status)[-1] == "2 applied, 0 pending", status.stderr


def test_given_the_tools_table_by_name_nothing_reads_or_writes_it(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    left_by("golang-migrate", db, range(1, 2))
    before = db.snapshot()
    done = cli(workspace, "--table", "schema_migrations", "migrate", folder=folder)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error 22: the tracking table {db.label('schema_migrations')} is golang-migrate's"
        " tracking table (version, dirty), not this tool's, so nothing ran and it was left"
        " as it is: with no --table this tool tracks in migrations_node beside it (stop a"
        " worker started before that table existed: `migrations-node stop`), then"
        " `migrations-node adopt --from golang-migrate`; or give --table another name")
    adopt = cli(workspace, "--table", "schema_migrations", "adopt", "--from", "golang-migrate",
                folder=folder)
    assert adopt.returncode == 1 and adopt.stderr == done.stderr
    assert db.snapshot() == before


def test_a_worker_started_before_the_tool_made_its_table_says_to_stop_it(
        workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    assert cli(workspace, "status", folder=folder).returncode == 0  # nothing there yet
    left_by("golang-migrate", db, range(1, 2))  # meanwhile
    before = db.snapshot()
    done = cli(workspace, "migrate", folder=folder)
    assert done.returncode == 1 and "`migrations-node stop`" in done.stderr, done.stderr
    assert db.snapshot() == before
    assert cli(workspace, "stop").returncode == 0
    adopted = cli(workspace, "adopt", "--from", "golang-migrate", folder=folder)
    assert adopted.returncode == 0, adopted.stderr
    assert "migrations_node" in db.tables()


def test_baseline_also_begins_our_table_beside_the_tools(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    left_by("dbmate", db, range(1, 2))
    done = cli(workspace, "baseline", "--to", "1", folder=folder)
    assert done.returncode == 0, done.stderr
    assert "migrations_node" in db.tables() and tool_rows(db, "dbmate") == [("0001",)]


# -- the request, and the project file ----------------------------------------------------


def test_the_request_names_the_tool_and_a_dry_run_records_nothing(workspace, db, folder):
    sql_migrations(folder, range(1, 3))
    left_by("dbmate", db, range(1, 2))
    replies, completed = workspace.run([
        request("adopt", 1, **{"from": "dbmate", "dry_run": True}),
        request("adopt", 2, **{"from": "liquibase"}),
        request("adopt", 3),
        request("adopt", 4, **{"from": "dbmate"}),
        request("adopt", 5, **{"from": "dbmate"}),
    ], "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    entry = {"version": 1, "name": "t1", "status": "adopted", "applied_at": None}
    assert replies[0] == {"type": "migrations_adopted", "in_reply_to": 1, "from": "dbmate",
                          "from_table": "schema_migrations", "table": "migrations_node",
                          "renamed": True, "count": 1, "migrations": [entry],
                          "dry_run": True}
    assert replies[1]["code"] == 12 and replies[1]["text"] == (
        "from must be one of golang-migrate, goose, flyway, sql-migrate, dbmate, not"
        " 'liquibase'")
    assert replies[2]["code"] == 12 and replies[2]["text"].startswith("adopt needs from:")
    dry = {key: value for key, value in replies[0].items() if key != "dry_run"}
    assert replies[3] == {**dry, "in_reply_to": 4}
    assert replies[4]["code"] == 22  # the second finds the first's records


def test_adopt_says_its_table_in_the_projects_pyproject_keeping_every_other_byte(
        workspace, folder):
    sql_migrations(folder, range(1, 3))
    project = workspace.root / "pyproject.toml"
    before = ('[project]\nname = "app"  # the app\n\n'
              "[tool.migrations-node] # where the database is\n"
              'db = "app.db"\nmigrations = "migrations"\n\n[tool.other]\nkey = 1\n')
    project.write_text(before)
    os.chmod(project, 0o640)
    database = Database("sqlite", str(workspace.root / "app.db"), None)
    left_by("dbmate", database, range(1, 2))
    done = in_project(workspace, "adopt", "--from", "dbmate")
    assert done.returncode == 0, done.stderr
    assert lines(done)[3] == (f'recorded table = "migrations_node" under'
                              f" [tool.migrations-node] in {project}")
    assert project.read_text() == before.replace(
        "# where the database is\n", "# where the database is\n"
        'table = "migrations_node"  # adopt: schema_migrations is dbmate\'s\n')
    assert os.stat(project).st_mode & 0o777 == 0o640
    config = in_project(workspace, "config")
    assert ["table", "migrations_node", str(project)] in [
        line.split() for line in lines(config)]
    assert lines(in_project(workspace, "status"))[-1] == "1 applied, 1 pending"


def in_project(workspace, *args: str) -> subprocess.CompletedProcess:
    """A command run in the workspace with no --db or --migrations: the project file's."""
    return subprocess.run([sys.executable, str(NODE), *args], capture_output=True, text=True,
                          env=workspace.env, cwd=workspace.root, timeout=PROCESS_TIMEOUT_S)


# -- the tools themselves ------------------------------------------------------------------


def dbmate_url(db: Database) -> str:
    if db.kind == "sqlite":
        return f"sqlite:{db.arg}"
    return db.arg.replace("postgresql://", "postgres://") + "?sslmode=disable"


def test_dbmate_applies_a_folder_and_adopt_takes_its_database_over(workspace, db, folder):
    dbmate = tool_binaries.dbmate()
    sql_migrations(folder, range(1, 4))
    (folder / "0003_t3.sql").rename(workspace.root / "later.sql")  # not there yet
    ran = subprocess.run([str(dbmate), "--url", dbmate_url(db), "--migrations-dir",
                          str(folder), "--no-dump-schema", "up"], capture_output=True,
                         text=True, timeout=PROCESS_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr
    theirs = tool_rows(db, "dbmate")
    (workspace.root / "later.sql").rename(folder / "0003_t3.sql")
    done = cli(workspace, "adopt", "--from", "dbmate", folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:3] for line in lines(done)[:2]] == [
        ["adopted", "1", "t1"], ["adopted", "2", "t2"]]
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    assert tool_rows(db, "dbmate") == theirs and "t3" in db.tables()
    # dbmate still reads its own table on the same database, side by side.
    ran = subprocess.run([str(dbmate), "--url", dbmate_url(db), "--migrations-dir",
                          str(folder), "status"], capture_output=True, text=True,
                         timeout=PROCESS_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[:3] == ["[X] 0001_t1.sql", "[X] 0002_t2.sql",
                                           "[ ] 0003_t3.sql"]


def test_sql_migrate_applies_a_folder_and_adopt_takes_its_database_over(
        workspace, db, folder):
    sql_migrate = tool_binaries.sql_migrate()
    for version in (1, 2):
        for name, text in OWN_FILES["sql-migrate"](version).items():
            (folder / name).write_text(text)
    if db.kind == "sqlite":
        dialect, source = "sqlite3", db.arg
    else:
        dialect = "postgres"
        source = (f"host=127.0.0.1 user=postgres dbname={db.arg.rpartition('/')[2]}"
                  " sslmode=disable")
    (workspace.root / "dbconfig.yml").write_text(
        f"development:\n  dialect: {dialect}\n  datasource: {source}\n  dir: {folder}\n")
    started = utc_now()
    ran = subprocess.run([str(sql_migrate), "up"], capture_output=True, text=True,
                         cwd=workspace.root, timeout=PROCESS_TIMEOUT_S)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    finished = utc_now()
    theirs = tool_rows(db, "sql-migrate")
    for name, text in OWN_FILES["sql-migrate"](3).items():  # written since
        (folder / name).write_text(text)
    done = cli(workspace, "adopt", "--from", "sql-migrate", folder=folder)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:3] for line in lines(done)[:2]] == [
        ["adopted", "1", "t1"], ["adopted", "2", "t2"]]
    for event in adopted_events(workspace, folder):  # sql-migrate's own applied_at
        assert started[:19] <= event["started_at"][:19] <= finished, event
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    assert tool_rows(db, "sql-migrate") == theirs and "t3" in db.tables()
    # sql-migrate still reads its own table on the same database, side by side.
    status = subprocess.run([str(sql_migrate), "status"], capture_output=True, text=True,
                            cwd=workspace.root, timeout=PROCESS_TIMEOUT_S)
    assert status.returncode == 0, status.stderr
    table = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in status.stdout.splitlines() if line.startswith("| ")]
    assert [row[0] for row in table[1:]] == ["1_t1.sql", "2_t2.sql", "3_t3.sql"]
    assert table[3][1] == "no", status.stdout  # ours applied it; sql-migrate knows it not
