"""Repeatable migrations (Flyway's R__name.sql, R__name.py): applied after the versioned ones
whenever their checksum changed, never reverted, never drift.

The engine tests run once on a SQLite file and once on a PostgreSQL schema
(tests/backends.py), reading the database through a connection of their own; the node tests
run node.py and its worker as real processes, on both backends where the store is what they
test (a worker killed after a commit), and on SQLite where the wire is.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import endpoint
from broker.errors import MIGRATION_FAILED, PRECONDITION_FAILED, ReplyError
from tests.backends import PG_SERVER, Backend, postgres_answers
from tests.processes import gone
from tests.support import PROCESS_TIMEOUT_S, request
from worker.catalog import Catalog, checksum_of
from worker.engine import Engine
from worker.params import Params

Reply = dict[str, Any]
# A repeatable both databases run as written: a view over the versioned migration's table.
NAMES_VIEW = """
DROP VIEW IF EXISTS user_names;
CREATE VIEW user_names AS SELECT name FROM users;
"""
USERS = """
-- migrate:up
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO users (id, name) VALUES (1, 'ada');
-- migrate:down
DROP TABLE users;
"""


# -- helpers -----------------------------------------------------------------------------


class Files:
    """A migrations folder, written by the test."""

    def __init__(self, root: Path) -> None:
        self.path = root / "migrations"
        self.path.mkdir()

    def write(self, filename: str, source: str) -> Path:
        path = self.path / filename
        path.write_text(textwrap.dedent(source).lstrip("\n"))
        return path

    def logging_repeatable(self, name: str, extra: str = "") -> Path:
        """R__<name>.py: each application adds a row naming it to `applications`."""
        return self.write(f"R__{name}.py", f"""
            def up(db):
                db.execute("CREATE TABLE IF NOT EXISTS applications (name TEXT NOT NULL)")
                db.execute("INSERT INTO applications (name) VALUES (?)", ({name!r},))
                {extra}
            """)

    def checksum(self, name: str) -> str:
        """The checksum of the repeatable `name`'s file as it is now."""
        (path,) = self.path.glob(f"R__{name}.*")
        return checksum_of(path.read_bytes())

    def applied(self, *names: str) -> list[Reply]:
        """A migrate's `repeatables` when it applied `names`, as their files are now."""
        return [{"name": name, "status": "applied", "checksum": self.checksum(name)}
                for name in names]


class Folder(Files):
    """A migrations folder and a database, with engines on them like new workers'."""

    def __init__(self, root: Path, db: Backend) -> None:
        super().__init__(root)
        self.db = db
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """One engine for the test, as one worker serves many requests."""
        if self._engine is None:
            self._engine = self.new_engine()
        return self._engine

    def new_engine(self) -> Engine:
        store = self.db.store()
        return Engine(store, Catalog(self.path, split_statements=store.split_statements))

    def applications(self) -> list[str]:
        """The repeatables' applications that committed, in order."""
        if "applications" not in self.db.tables():
            return []
        return [name for (name,) in self.db.query("SELECT name FROM applications")]

    def migrate(self, request_id: bytes, **fields: Any) -> Reply:
        return outcome(lambda: self.engine.migrate(request_id, Params(fields)))

    def status(self) -> Reply:
        self.engine.new_batch()  # as the server does for each message: see changes since
        return self.engine.status(b"status")

    def repeatable_events(self) -> list[tuple[Any, ...]]:
        """(version, name, action) of every history event of a repeatable, oldest first."""
        events = self.engine.history(b"history")["events"]
        return [(e["version"], e["name"], e["action"]) for e in events if e["version"] is None]


# Why a test does not run on MariaDB (Backend.only): its premise does not hold there.
DDL_STAYS = ("the failed repeatable's CREATE TABLE must roll back; on MariaDB DDL commits at"
             " once and a failed repeatable leaves it (README)")
DRY_DDL = "a dry run of DDL; on MariaDB a dry run stops before DDL with error 22"

@pytest.fixture
def db_folder(tmp_path: Path, backend: Backend) -> Folder:
    return Folder(tmp_path, backend)  # the backend fixture closes every store at teardown


def outcome(call: Callable[[], Reply]) -> Reply:
    """The reply body a request gets, whether the handler returned it or raised it."""
    try:
        return call()
    except ReplyError as error:
        return error.body()


def versioned(*pairs: tuple[int, str]) -> list[Reply]:
    return [{"version": version, "name": name, "status": "applied"} for version, name in pairs]


# -- order, and only what changed -------------------------------------------------------


def test_repeatables_run_after_every_versioned_migration_in_name_order(db_folder: Folder) -> None:
    # The view needs the table of migration 2, and runs last although "b" < "z".
    db_folder.write("0001_first.sql", "-- migrate:up\nCREATE TABLE first (id INTEGER);\n")
    db_folder.write("0002_users.sql", USERS)
    db_folder.write("R__b_user_names.sql", NAMES_VIEW)
    db_folder.logging_repeatable("a_log")
    db_folder.logging_repeatable("c_log")

    reply = db_folder.migrate(b"r1")

    assert reply == {
        "type": "migrations_applied", "count": 2,
        "migrations": versioned((1, "first"), (2, "users")),
        "repeatables": db_folder.applied("a_log", "b_user_names", "c_log"),
    }
    assert db_folder.applications() == ["a_log", "c_log"]
    assert db_folder.db.query("SELECT name FROM user_names") == [("ada",)]
    assert db_folder.repeatable_events() == [
        (None, "a_log", "repeatable"), (None, "b_user_names", "repeatable"),
        (None, "c_log", "repeatable")]


def test_a_repeatable_runs_again_only_when_its_file_changed(db_folder: Folder) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.logging_repeatable("log")
    db_folder.write("R__user_names.sql", NAMES_VIEW)
    db_folder.migrate(b"r1")

    unchanged = db_folder.migrate(b"r2")
    db_folder.write("R__user_names.sql", NAMES_VIEW + "\n\n")  # whitespace is not a change
    still = db_folder.migrate(b"r3")
    db_folder.write("R__user_names.sql", NAMES_VIEW.replace("SELECT name", "SELECT id, name"))
    edited = db_folder.migrate(b"r4")

    nothing = {"type": "migrations_applied", "count": 0, "migrations": [], "repeatables": []}
    assert unchanged == nothing and still == nothing
    assert edited == {**nothing, "repeatables": db_folder.applied("user_names")}
    assert db_folder.db.query("SELECT id, name FROM user_names") == [(1, "ada")]
    assert db_folder.applications() == ["log"]
    assert [name for _, name, _ in db_folder.repeatable_events()] == [
        "log", "user_names", "user_names"]


def test_status_lists_each_repeatable_with_its_checksum_and_the_one_last_applied(
    db_folder: Folder,
) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.write("R__user_names.sql", NAMES_VIEW)
    db_folder.logging_repeatable("log")
    first = db_folder.checksum("user_names")

    before = db_folder.status()["repeatables"]
    db_folder.migrate(b"r1")
    after = db_folder.status()["repeatables"]
    db_folder.write("R__user_names.sql", NAMES_VIEW + "-- names only\n")
    (db_folder.path / "R__log.py").unlink()
    edited = db_folder.status()["repeatables"]

    now = db_folder.checksum("user_names")
    assert before == [
        {"name": "log", "state": "pending", "checksum": before[0]["checksum"],
         "applied_checksum": None, "applied_at": None},
        {"name": "user_names", "state": "pending", "checksum": first,
         "applied_checksum": None, "applied_at": None},
    ]
    assert [(e["name"], e["state"], e["checksum"] == e["applied_checksum"]) for e in after] == [
        ("log", "applied", True), ("user_names", "applied", True)]
    assert all(isinstance(e["applied_at"], str) for e in after)
    assert edited == [
        {**after[0], "state": "missing", "checksum": None},
        {**after[1], "state": "outdated", "checksum": now},
    ]
    assert edited[1]["applied_checksum"] == first != edited[1]["checksum"]


def test_status_sees_a_repeatable_edited_in_place_long_after_it_was_listed(
    db_folder: Folder,
) -> None:
    # Old enough to be trusted: the db_folder's listing and the status reply are kept...
    path = db_folder.write("R__user_names.sql", NAMES_VIEW)
    db_folder.write("0001_users.sql", USERS)
    db_folder.migrate(b"r1")
    an_hour_ago = time.time() - 3600
    for old in (path, db_folder.path):
        os.utime(old, (an_hour_ago, an_hour_ago))
    assert db_folder.status()["repeatables"][0]["state"] == "applied"
    assert db_folder.status() is db_folder.status()  # the kept reply

    # ... until the file is written in place, which leaves the db_folder's mtime as it was.
    path.write_text(NAMES_VIEW + "-- edited\n")
    os.utime(path, (an_hour_ago + 60, an_hour_ago + 60))
    os.utime(db_folder.path, (an_hour_ago, an_hour_ago))

    assert db_folder.status()["repeatables"][0]["state"] == "outdated"


def test_a_folder_without_repeatables_gets_the_replies_it_always_had(db_folder: Folder) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.write("0002_broken.py", "def up(db):\n    raise ValueError('boom')\n")

    status = db_folder.status()
    failed = db_folder.migrate(b"r1")
    (db_folder.path / "0002_broken.py").unlink()
    again = db_folder.migrate(b"r2")

    assert status == {"type": "migration_status", "migrations": [
        {"version": 1, "name": "users", "applied": False},
        {"version": 2, "name": "broken", "applied": False}]}
    assert failed == {
        "type": "error", "code": MIGRATION_FAILED,
        "text": "migration 2 broken failed and was rolled back, so it is not applied:"
                " ValueError: boom",
        "applied": versioned((1, "users")),
        "failed": {"version": 2, "name": "broken", "error": "ValueError: boom"},
    }
    assert again == {"type": "migrations_applied", "count": 0, "migrations": []}
    assert "repeatables" not in db_folder.status()
    assert db_folder.db.query(f"SELECT count(*) FROM {db_folder.db.tracking.repeats}") == [(0,)]


# -- drift, failure, targets -------------------------------------------------------------


def test_validate_calls_neither_an_edited_nor_a_deleted_repeatable_a_problem(
    db_folder: Folder,
) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.write("R__user_names.sql", NAMES_VIEW)
    db_folder.logging_repeatable("log")
    db_folder.migrate(b"r1")
    db_folder.write("R__user_names.sql", NAMES_VIEW + "-- edited\n")
    (db_folder.path / "R__log.py").unlink()

    assert db_folder.engine.validate(b"v1") == {"type": "validation", "ok": True, "problems": []}
    reply = db_folder.migrate(b"r2")  # and migrate is not refused: it applies the edit
    assert reply["repeatables"] == db_folder.applied("user_names")


def test_a_failing_repeatable_rolls_back_only_itself_and_names_it(db_folder: Folder) -> None:
    db_folder.db.only("sqlite", "postgresql", why=DDL_STAYS)
    db_folder.write("0001_users.sql", USERS)
    db_folder.logging_repeatable("a_log")
    db_folder.write("R__b_broken.sql", """
        CREATE TABLE half_done (id INTEGER);
        SELECT * FROM no_such_table;
        """)
    db_folder.logging_repeatable("c_log")

    failed = db_folder.migrate(b"r1")

    assert failed["code"] == MIGRATION_FAILED
    assert failed["text"].startswith(
        "repeatable migration b_broken failed and was rolled back, so this version of it is"
        " not applied: ")
    assert {key: failed[key] for key in ("applied", "repeatables")} == {
        "applied": versioned((1, "users")), "repeatables": db_folder.applied("a_log")}
    assert failed["failed"]["version"] is None and failed["failed"]["name"] == "b_broken"
    assert list(failed) == ["type", "code", "text", "applied", "repeatables", "failed"]
    assert "half_done" not in db_folder.db.tables() and db_folder.applications() == ["a_log"]
    assert db_folder.db.versions() == [1]
    states = {e["name"]: e["state"] for e in db_folder.status()["repeatables"]}
    assert states == {"a_log": "applied", "b_broken": "pending", "c_log": "pending"}

    db_folder.write("R__b_broken.sql", "CREATE TABLE half_done (id INTEGER);\n")
    fixed = db_folder.migrate(b"r2")
    assert fixed["repeatables"] == db_folder.applied("b_broken", "c_log")
    assert db_folder.applications() == ["a_log", "c_log"]


def test_a_migrate_to_below_the_newest_version_leaves_repeatables_for_later(
    db_folder: Folder,
) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.write("0002_more.sql", "-- migrate:up\nCREATE TABLE more (id INTEGER);\n")
    db_folder.write("R__user_names.sql", NAMES_VIEW)

    partway = db_folder.migrate(b"r1", to=1)
    there = db_folder.migrate(b"r2", to=2)

    assert partway == {"type": "migrations_applied", "count": 1,
                       "migrations": versioned((1, "users")), "repeatables": []}
    assert there == {"type": "migrations_applied", "count": 1,
                     "migrations": versioned((2, "more")),
                     "repeatables": db_folder.applied("user_names")}


def test_a_dry_run_runs_repeatables_too_and_keeps_nothing(db_folder: Folder) -> None:
    db_folder.db.only("sqlite", "postgresql", why=DRY_DDL)
    db_folder.write("0001_users.sql", USERS)
    db_folder.write("R__user_names.sql", NAMES_VIEW)
    db_folder.write("R__z_check.sql", "SELECT name FROM user_names;\n")  # sees the view
    assert db_folder.engine is not None  # a worker has the database open before the request
    before = db_folder.db.snapshot()

    dry = db_folder.migrate(b"d1", dry_run=True)

    locks = {"locks": []} if db_folder.db.name == "postgresql" else {}
    assert dry == {"type": "migrations_applied", "count": 1,
                   "migrations": versioned((1, "users")),
                   "repeatables": db_folder.applied("user_names", "z_check"),
                   "dry_run": True, **locks}
    assert db_folder.db.snapshot() == before
    real = db_folder.migrate(b"r1")
    assert real["repeatables"] == dry["repeatables"]


def test_a_dry_run_names_the_locks_of_a_repeatable_by_its_name(db_folder: Folder) -> None:
    db_folder.db.only("sqlite", "postgresql", why=DRY_DDL)
    db_folder.write("0001_users.sql", USERS)
    db_folder.migrate(b"r1")
    db_folder.write("R__user_names.sql", NAMES_VIEW)

    dry = db_folder.migrate(b"d1", dry_run=True)

    if db_folder.db.name == "sqlite":
        assert "locks" not in dry
        return
    users = f"{db_folder.db.schema}.users"
    assert [(e["version"], e["name"], e["relation"], e["mode"]) for e in dry["locks"]] == [
        (None, "user_names", users, "AccessShareLock")]
    assert list(dry["locks"][0]) == ["version", "name", "relation", "mode", "rewritten", "bytes"]


def test_rollback_never_reverts_nor_forgets_a_repeatable(db_folder: Folder) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.logging_repeatable("log")
    db_folder.migrate(b"r1")
    recorded = db_folder.db.query(
        f"SELECT name, checksum, applied_at FROM {db_folder.db.tracking.repeats}")

    rolled_back = db_folder.engine.rollback(b"r2", Params({"to": 0}))
    again = db_folder.migrate(b"r3")

    assert rolled_back == {"type": "migrations_rolled_back", "count": 1,
                           "migrations": [{"version": 1, "name": "users",
                                           "status": "rolled_back"}]}
    assert again == {"type": "migrations_applied", "count": 1,
                     "migrations": versioned((1, "users")), "repeatables": []}
    assert db_folder.applications() == ["log"]  # applied once, and still there
    assert db_folder.db.query(
        f"SELECT name, checksum, applied_at FROM {db_folder.db.tracking.repeats}") == recorded
    assert [action for _, _, action in db_folder.repeatable_events()] == ["repeatable"]


def test_a_resent_migrate_gets_its_stored_reply_and_applies_nothing_twice(
    db_folder: Folder,
) -> None:
    db_folder.write("0001_users.sql", USERS)
    db_folder.logging_repeatable("log")
    first = db_folder.migrate(b"r1")

    resent = db_folder.new_engine().migrate(b"r1")  # a new worker, the same request

    assert resent == first and db_folder.applications() == ["log"]


def test_two_files_of_one_name_are_error_22_for_every_request_that_reads_them(
    db_folder: Folder,
) -> None:
    db_folder.write("R__same.sql", "SELECT 1;\n")
    db_folder.logging_repeatable("same")
    said = "repeatable migration same is defined twice: R__same.py and R__same.sql"

    for reply in (db_folder.migrate(b"r1"), outcome(db_folder.status),
                  outcome(lambda: db_folder.engine.validate(b"v1"))):
        assert reply == {"type": "error", "code": PRECONDITION_FAILED, "text": said}
    assert db_folder.applications() == []


def test_a_repeatable_sql_file_with_sections_fails_naming_its_line(db_folder: Folder) -> None:
    db_folder.write("R__sections.sql", "CREATE TABLE kept (id INTEGER);\n-- migrate:down\n"
                 "DROP TABLE kept;\n")

    failed = db_folder.migrate(b"r1")

    assert failed["code"] == MIGRATION_FAILED
    assert failed["failed"] == {
        "version": None, "name": "sections",
        "error": "SqlFileError: R__sections.sql line 2: a repeatable migration is plain SQL,"
                 " run whole and never reverted, so '-- migrate:down' has no place in it"}
    assert "kept" not in db_folder.db.tables()


# -- real nodes --------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def node_db(request: pytest.FixtureRequest, workspace) -> Iterator[str]:
    """The workspace's --db: its SQLite file, or a fresh database on the PostgreSQL server
    (dropped afterwards, its worker killed first: the workspace finds only file owners)."""
    if request.param == "sqlite":
        yield str(workspace.db)
        return
    psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed")
    if not postgres_answers():
        pytest.skip("no PostgreSQL server answers at 127.0.0.1:5432")
    admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
    name = f"mn_repeat_{secrets.token_hex(6)}"
    admin.execute(f"CREATE DATABASE {name}")
    workspace.db = f"{PG_SERVER}/{name}"
    old = os.environ.get(endpoint.RUNTIME_DIR_ENV)
    os.environ[endpoint.RUNTIME_DIR_ENV] = workspace.env[endpoint.RUNTIME_DIR_ENV]
    try:
        yield workspace.db
    finally:
        pid = endpoint.read_owner(endpoint.for_database(workspace.db).lock_path).pid
        if pid is not None and not gone(pid):
            os.kill(pid, signal.SIGKILL)
        if old is None:
            os.environ.pop(endpoint.RUNTIME_DIR_ENV, None)
        else:
            os.environ[endpoint.RUNTIME_DIR_ENV] = old
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def applications(db: str) -> list[str]:
    """The repeatables' applications that committed in the database `db` (a path or URL)."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as connection:
            return [name for (name,) in connection.execute("SELECT name FROM applications")]
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as connection:
        return [name for (name,) in connection.execute("SELECT name FROM applications")]


def test_a_worker_killed_after_a_repeatable_commits_is_resent_and_answers_once(
    workspace, node_db
) -> None:
    folder = Files(workspace.root)
    folder.write("0001_users.sql", USERS)
    trigger = workspace.root / "crash-now"
    # The commit of the first repeatable kills the worker: its code arms the hook.
    folder.logging_repeatable("a_log", f"open({str(trigger)!r}, 'w').close()")
    folder.logging_repeatable("b_log")
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)

    replies, completed = workspace.run(
        [request("migrate", 1, progress=True), request("health", 2),
         request("history", 3), request("status", 4)],
        "--migrations", str(folder.path))

    assert completed.returncode == 0, completed.stderr
    *progress, migrated, health, history, status = replies
    assert not trigger.exists() and health["worker_restarts"] == 1
    assert migrated == {
        "type": "migrations_applied", "in_reply_to": 1, "count": 1,
        "migrations": versioned((1, "users")),
        "repeatables": folder.applied("a_log", "b_log")}
    # The killed worker may not have sent its steps' lines; each is told at most once.
    told = [(p["done"], p["total"], p["version"], p["name"]) for p in progress]
    assert set(told) <= {(1, 3, 1, "users"), (2, 3, None, "a_log"), (3, 3, None, "b_log")}
    assert len(set(told)) == len(told) and told[-1] == (3, 3, None, "b_log")
    assert [(e["version"], e["name"], e["action"]) for e in history["events"]] == [
        (1, "users", "apply"), (None, "a_log", "repeatable"), (None, "b_log", "repeatable")]
    assert [e["state"] for e in status["repeatables"]] == ["applied", "applied"]
    assert applications(node_db) == ["a_log", "b_log"]


def test_the_seed_exchanges_and_reads_are_byte_for_byte_without_repeatables(workspace) -> None:
    lines = [request(kind, msg_id) for msg_id, kind in
             enumerate(("status", "migrate", "validate", "status", "rollback"), start=1)]
    replies, completed = workspace.run(lines)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.decode().splitlines() == [
        '{"type": "migration_status", "in_reply_to": 1, "migrations": [{"version": 1, "name":'
        ' "create_users", "applied": false}, {"version": 2, "name": "add_posts_table",'
        ' "applied": false}]}',
        '{"type": "migrations_applied", "in_reply_to": 2, "count": 2, "migrations":'
        ' [{"version": 1, "name": "create_users", "status": "applied"}, {"version": 2,'
        ' "name": "add_posts_table", "status": "applied"}]}',
        '{"type": "validation", "in_reply_to": 3, "ok": true, "problems": []}',
        '{"type": "migration_status", "in_reply_to": 4, "migrations": [{"version": 1, "name":'
        ' "create_users", "applied": true}, {"version": 2, "name": "add_posts_table",'
        ' "applied": true}]}',
        '{"type": "migration_rolled_back", "in_reply_to": 5, "version": 2,'
        ' "name": "add_posts_table"}',
    ]
    assert all("repeatable" not in json.dumps(reply) for reply in replies)


def test_the_commands_show_repeatables_as_r_with_their_state(workspace) -> None:
    folder = Files(workspace.root)
    folder.write("0001_users.sql", USERS)
    folder.write("R__user_names.sql", NAMES_VIEW)

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            workspace.node_command("--migrations", str(folder.path), *args),
            capture_output=True, text=True, env=workspace.env, cwd=workspace.root,
            timeout=PROCESS_TIMEOUT_S)

    migrated = command("migrate")
    folder.write("R__user_names.sql", NAMES_VIEW + "-- edited\n")
    status = command("status", "--exit-code")
    history = command("history")

    assert migrated.returncode == 0, migrated.stderr
    assert [line.split()[:3] for line in migrated.stdout.splitlines()] == [
        ["applied", "1", "users"], ["applied", "R", "user_names"],
        ["2", "migrations", "applied"]]
    assert status.returncode == 1  # a changed repeatable is work for migrate
    assert [line.split()[:3] for line in status.stdout.splitlines()[1:3]] == [
        ["1", "users", "applied"], ["R", "user_names", "outdated"]]
    assert status.stdout.splitlines()[-1] == (
        "1 applied, 0 pending; repeatable: 0 applied, 1 to apply")
    assert history.stdout.splitlines()[-1].split()[1:4] == ["repeatable", "R", "user_names"]
