"""CREATE INDEX CONCURRENTLY on PostgreSQL: it never deadlocks with a worker of ours waiting
to own the database, and an INVALID index left by a build that did not finish never poisons
the next run of its migration.

The statement detection is tested on text alone; the rest runs real nodes and workers on a
fresh database of the machine's server (skipped only when no server answers), a second
worker in a runtime directory of its own standing for one on another host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install .[test])")

from tests import test_postgres_node  # noqa: E402
from tests.conftest import kill_workers, stop_nodes  # noqa: E402
from tests.support import Workspace, request, wait_until  # noqa: E402
from tests.test_postgres_node import pg_query  # noqa: E402
from worker.stores.postgres.index import IndexBuild, index_builds  # noqa: E402

database = test_postgres_node.database  # the fixture: a fresh database for each test

OURS = "migrations worker pid %"  # the application_name of every session of our workers
INDEX_VALID = (
    "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
    " WHERE i.relname = %s"
)


# -- which statements build a named index concurrently -------------------------------------


@pytest.mark.parametrize(
    ("text", "builds"),
    [
        ("CREATE INDEX CONCURRENTLY t1_id ON t1 (id)", [IndexBuild("t1_id", ("t1",))]),
        ("create unique index concurrently T1_Id on T1 (id);",
         [IndexBuild("t1_id", ("t1",))]),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS t1_id ON app.t1 USING btree (id)",
         [IndexBuild("t1_id", ("app", "t1"))]),
        ('CREATE INDEX CONCURRENTLY "Odd ""Name""" ON "My Schema"."T" (id)',
         [IndexBuild('Odd "Name"', ("My Schema", "T"))]),
        ("CREATE INDEX CONCURRENTLY t1_id ON ONLY t1 (id)", [IndexBuild("t1_id", ("t1",))]),
        ("-- why\n/* a /* nested */ comment */ CREATE UNIQUE /* here */ INDEX CONCURRENTLY\n"
         "  t1_id -- too\n ON t1 (id)", [IndexBuild("t1_id", ("t1",))]),
        ("CREATE INDEX CONCURRENTLY if ON t1 (id)", [IndexBuild("if", ("t1",))]),
        ("CREATE INDEX CONCURRENTLY café_idx ON Café (id)",  # only ASCII letters fold
         [IndexBuild("café_idx", ("café",))]),
        ("CREATE INDEX CONCURRENTLY " + "i" * 70 + " ON t1 (id)",  # cut as PostgreSQL cuts
         [IndexBuild("i" * 63, ("t1",))]),
        ("SELECT 1; CREATE INDEX CONCURRENTLY a ON t1 (id); CREATE INDEX CONCURRENTLY b ON t2"
         " (id)", [IndexBuild("a", ("t1",)), IndexBuild("b", ("t2",))]),
        # Not one: no CONCURRENTLY, no name, the words in a string, a comment, a body.
        ("CREATE INDEX t1_id ON t1 (id)", []),
        ("CREATE UNIQUE INDEX t1_id ON t1 (id) WHERE note = 'CONCURRENTLY'", []),
        ("CREATE INDEX CONCURRENTLY ON t1 (id)", []),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS ON t1 (id)", []),
        ("SELECT 'CREATE INDEX CONCURRENTLY t1_id ON t1 (id)'", []),
        ("-- CREATE INDEX CONCURRENTLY t1_id ON t1 (id)\nSELECT 1", []),
        ("/* CREATE INDEX CONCURRENTLY t1_id ON t1 (id); */ SELECT 1", []),
        ("DO $$ BEGIN EXECUTE 'CREATE INDEX CONCURRENTLY t1_id ON t1 (id)'; END $$", []),
        ('SELECT "CREATE INDEX CONCURRENTLY t1_id ON t1 (id)" FROM t', []),
        ("CREATE INDEX CONCURRENTLY t1_id ON db.app.t1 (id)", []),
        ("CREATE INDEX CONCURRENTLY t1_id ON 't1' (id)", []),
        ("DROP INDEX CONCURRENTLY t1_id", []),
    ],
)
def test_a_concurrent_build_of_a_named_index_is_found_by_its_leading_tokens(text, builds):
    assert index_builds(text) == builds


def test_a_table_name_is_quoted_for_to_regclass_as_written():
    assert IndexBuild("i", ("My Schema", 'T"x')).table_text() == '"My Schema"."T""x"'
    assert IndexBuild("i", ("t1",)).table_text() == '"t1"'


# -- no deadlock with a worker waiting to own the database ---------------------------------


@pytest.fixture
def other_host(workspace: Workspace, database: str, request) -> Iterator[Workspace]:
    """The same database and folder seen from another runtime directory: its nodes start a
    worker of their own, as a node on another host would. Its processes are killed after."""
    runtime = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    space = Workspace(root=workspace.root, runtime=runtime, db=database,
                      env={**workspace.env, "MIGRATIONS_RUNTIME_DIR": str(runtime)})
    try:
        yield space
    finally:
        try:
            stop_nodes(space, getattr(request.node, "report_call", None))
        finally:
            kill_workers(space)


def sessions_of(url: str, worker_pid: int | None = None) -> list[tuple]:
    """(state, wait_event_type, query, backend_xmin) of each session of our workers (or of
    one worker), as pg_stat_activity shows them now."""
    name = OURS if worker_pid is None else f"migrations worker pid {worker_pid} on %"
    return pg_query(url, "SELECT state, wait_event_type, query, backend_xmin::text"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name LIKE %s", (name,))


def table_migration(folder: Path, rows: str) -> None:
    """Version 1: a table t1 holding `rows` (SQL VALUES lists)."""
    folder.mkdir(exist_ok=True)
    (folder / "0001_t1.sql").write_text(
        "-- migrate:up\nCREATE TABLE t1 (id integer);\n"
        f"INSERT INTO t1 (id) VALUES {rows};\n"
        "-- migrate:down\nDROP TABLE t1;\n")


def index_migration(folder: Path, index_sql: str, options: str = "") -> None:
    """Version 2: `index_sql`, outside a transaction, as the file says (with `options`
    on its up marker)."""
    (folder / "0002_index.sql").write_text(
        f"-- migrate:up transaction:false {options}\n{index_sql}\n"
        "-- migrate:down transaction:false\nDROP INDEX CONCURRENTLY IF EXISTS t1_id;\n")


def test_an_index_built_concurrently_never_waits_for_a_worker_waiting_to_own_the_database(
    workspace, database, other_host
):
    folder = workspace.root / "migrations"
    table_migration(folder, ", ".join(f"({n})" for n in range(1000)))
    # It waits for the test's writer for as long as it takes (no lock timeout).
    index_migration(folder, "CREATE INDEX CONCURRENTLY t1_id ON t1 (id);", "lock_timeout:0")
    owner = workspace.live("--migrations", str(folder))
    owner.send(request("migrate", 1, to=1), request("health", 2))
    migrated, health = owner.replies(2)
    assert migrated["count"] == 1, migrated
    owner_pid = health["worker_pid"]

    # A writer of the test's holds the index build at its first wait, so that the second
    # worker is surely waiting before the build goes on. Its transaction id, as any write
    # on a busy database, makes a snapshot taken meanwhile older than the build's last
    # one, which the build then waits for (a waiter in a statement holds one).
    holder = psycopg.connect(database)
    try:
        holder.execute("INSERT INTO t1 (id) VALUES (-1)")
        owner.send(request("migrate", 3))
        wait_until(lambda: pg_query(
            database, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'CREATE INDEX%%' AND wait_event_type = 'Lock'"
            " AND application_name LIKE %s", (OURS,)),
            what="the owner's index build to wait for the test's lock")

        waiting = other_host.live("--migrations", str(folder), "--owner-wait", "8")
        waiting.send(request("health", 1))
        waiting_pid = waiting.replies(1)[0]["worker_pid"]
        waiting.send(request("migrate", 2))
        wait_until(lambda: any(
            "advisory_lock(" in query for _, _, query, _ in sessions_of(database, waiting_pid)),
            what="the second worker's write to wait for the owner lock")
        during = sessions_of(database)
        holder.commit()
    finally:
        holder.close()

    (built,) = owner.replies(1)
    assert built.get("migrations") == [{"version": 2, "name": "index", "status": "applied"}], (
        built)
    assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(True,)]
    assert waiting.no_more_replies(), "the second worker stopped waiting before the build ended"
    # The waiting write ends as designed: the owner stayed, so error 11 naming it.
    (refused,) = waiting.replies(1)
    assert refused["code"] == 11, refused
    assert f"held by worker pid {owner_pid} on " in refused["text"]
    assert "waited 8 s for it to go, so nothing ran; try again" in refused["text"]
    # While it waited, no session of ours sat in a transaction, held a snapshot while idle,
    # or waited for a lock (the build's own wait aside).
    assert not [s for s in during if s[0].startswith("idle in transaction")], during
    assert not [s for s in during if s[0] == "idle" and s[3] is not None], during
    assert [s for s in during if s[1] == "Lock"] == [
        s for s in during if s[2].startswith("CREATE INDEX")], during
    said = "".join(path.read_text() for path in other_host.runtime.glob("*.log"))
    assert "waiting up to 8 s for the owner lock: public.schema_migrations in " in said, said
    assert f"is held by worker pid {owner_pid} on " in said, said
    assert owner.finish() == 0 and waiting.finish() == 0


def test_a_write_that_waited_for_the_owner_plans_from_what_the_owner_applied_meanwhile(
    workspace, database, other_host
):
    folder = workspace.root / "migrations"
    table_migration(folder, "(1)")
    (folder / "0002_t2.sql").write_text("-- migrate:up\nCREATE TABLE t2 (id integer);\n")
    owner = workspace.live("--migrations", str(folder))
    owner.send(request("migrate", 1, to=1))
    assert owner.replies(1)[0]["count"] == 1
    waiting = other_host.live("--migrations", str(folder), "--owner-wait", "60")
    waiting.send(request("health", 1))
    waiting_pid = waiting.replies(1)[0]["worker_pid"]
    waiting.send(request("migrate", 2))  # 2 is pending as it is sent
    wait_until(lambda: any(
        "advisory_lock(" in query for _, _, query, _ in sessions_of(database, waiting_pid)),
        what="the second worker's write to wait for the owner lock")

    owner.send(request("migrate", 2))
    assert owner.replies(1)[0]["migrations"] == [{"version": 2, "name": "t2",
                                                  "status": "applied"}]
    assert owner.finish() == 0  # its node first, which would start a worker again
    # The owner goes; the waiting write gets its turn.
    os.kill(test_postgres_node.workspace_worker_pid(workspace), signal.SIGTERM)

    (reply,) = waiting.replies(1)
    assert reply == {"type": "migrations_applied", "in_reply_to": 2, "count": 0,
                     "migrations": []}, reply
    assert pg_query(database, "SELECT version FROM schema_migrations ORDER BY 1") == [
        (1,), (2,)]


# -- an INVALID index left behind is dropped and built again -------------------------------


def history(workspace, folder: Path) -> list[tuple[int, str]]:
    replies, completed = workspace.run([request("history", 1)], "--migrations", str(folder))
    assert replies[0]["type"] == "migration_history", completed.stderr
    return [(event["version"], event["action"]) for event in replies[0]["events"]]


def migrate(workspace, folder: Path, **fields) -> dict:
    replies, completed = workspace.run([request("migrate", 1, **fields)], "--migrations",
                                       str(folder))
    assert len(replies) == 1, completed.stderr
    return replies[0]


@pytest.mark.parametrize(
    "index_sql",
    [
        "CREATE UNIQUE INDEX CONCURRENTLY t1_id ON t1 (id);",
        # Without the repair this one would keep the INVALID index and say it was applied.
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t1_id ON t1 (id);",
        '-- the table as another migration named it\nCREATE UNIQUE INDEX CONCURRENTLY "t1_id"'
        ' ON public."t1" (id);',
    ],
)
def test_an_invalid_index_left_by_a_failed_build_is_dropped_and_built_again(
    workspace, database, index_sql
):
    folder = workspace.root / "migrations"
    table_migration(folder, "(1), (1), (2)")
    index_migration(folder, index_sql)

    failed = migrate(workspace, folder)  # the duplicate makes the unique build fail
    assert failed["code"] == 14 and failed["failed"]["version"] == 2, failed
    assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(False,)]

    # Run again before the data is fixed: dropped (that stays), built, and failed again.
    again = migrate(workspace, folder)
    assert again.get("code") == 14, again  # IF NOT EXISTS kept the INVALID one: "applied"
    assert "could not create unique index" in again["text"], again
    assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(False,)]
    assert history(workspace, folder) == [(1, "apply"), (2, "drop_invalid_index")]

    pg_query(database, "DELETE FROM t1 WHERE ctid = (SELECT max(ctid) FROM t1 WHERE id = 1)")
    applied = migrate(workspace, folder)
    assert applied["migrations"] == [{"version": 2, "name": "index", "status": "applied"}]
    assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(True,)]
    assert history(workspace, folder) == [
        (1, "apply"), (2, "drop_invalid_index"), (2, "drop_invalid_index"), (2, "apply")]
    said = "".join(path.read_text() for path in workspace.runtime.glob("*.log"))
    assert said.count("dropped the INVALID index public.t1_id on ") == 2, said


def test_a_build_that_timed_out_waiting_for_a_lock_is_dropped_and_built_by_the_next_try(
    workspace, database
):
    """A build gives up at its first wait for the table's writers after creating its
    index: the retry finds that INVALID index in its way."""
    folder = workspace.root / "migrations"
    table_migration(folder, "(1), (2)")
    index_migration(folder, "CREATE INDEX CONCURRENTLY t1_id ON t1 (id);", "lock_timeout:0.2")
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1, to=1))
    assert node.replies(1)[0]["count"] == 1
    writer = psycopg.connect(database)
    try:
        writer.execute("INSERT INTO t1 (id) VALUES (3)")
        node.send(request("migrate", 2))
        wait_until(lambda: pg_query(
            database, "SELECT 1 FROM schema_migration_history WHERE action = 'lock_timeout'"),
            what="the first try to give up waiting for the test's writer")
        assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(False,)]
        writer.commit()
    finally:
        writer.close()

    (applied,) = node.replies(1)
    assert applied.get("migrations") == [
        {"version": 2, "name": "index", "status": "applied"}], applied
    assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(True,)]
    events = history(workspace, folder)
    assert events[:2] == [(1, "apply"), (2, "lock_timeout")], events
    assert events[-2:] == [(2, "drop_invalid_index"), (2, "apply")], events
    # On a slow machine a later try may give up too, leaving an index the next one drops.
    assert set(events[2:-2]) <= {(2, "drop_invalid_index"), (2, "lock_timeout")}, events
    assert node.finish() == 0


def test_a_python_migration_outside_a_transaction_gets_the_repair_too(workspace, database):
    folder = workspace.root / "migrations"
    table_migration(folder, "(1), (1)")
    (folder / "0002_index.py").write_text(
        "TRANSACTION = False\n\n\n"
        "def up(db):\n"
        "    db.executescript('/* one statement */ CREATE UNIQUE INDEX CONCURRENTLY t1_id"
        " ON t1 (id)')\n")
    assert migrate(workspace, folder)["code"] == 14
    pg_query(database, "DELETE FROM t1 WHERE ctid = (SELECT max(ctid) FROM t1)")

    assert migrate(workspace, folder)["count"] == 1
    assert pg_query(database, INDEX_VALID, ("t1_id",)) == [(True,)]
    assert history(workspace, folder) == [(1, "apply"), (2, "drop_invalid_index"), (2, "apply")]


@pytest.mark.parametrize(
    "in_the_way",
    [
        ["CREATE INDEX t1_id ON t1 (id)"],  # valid: PostgreSQL's "already exists" stands
        # INVALID, but on another table: not the index this migration builds
        ["CREATE TABLE t2 (id integer)", "INSERT INTO t2 VALUES (7), (7)",
         "CREATE UNIQUE INDEX CONCURRENTLY t1_id ON t2 (id)"],
    ],
)
def test_an_index_of_that_name_that_is_valid_or_on_another_table_is_never_dropped(
    workspace, database, in_the_way
):
    folder = workspace.root / "migrations"
    table_migration(folder, "(1), (2)")
    index_migration(folder, "CREATE INDEX CONCURRENTLY t1_id ON t1 (id);")
    replies, _ = workspace.run([request("migrate", 1, to=1)], "--migrations", str(folder))
    assert replies[0]["count"] == 1
    *prepared, last = in_the_way
    for statement in prepared:
        pg_query(database, statement)
    # A build over duplicates fails, leaving its INVALID index behind.
    with contextlib.suppress(psycopg.errors.UniqueViolation):
        pg_query(database, last)
    index = ("SELECT x.indexrelid::oid, x.indrelid::regclass::text, x.indisvalid"
             " FROM pg_index x WHERE x.indexrelid = 't1_id'::regclass")
    (before,) = pg_query(database, index)
    assert migrate(workspace, folder)["code"] == 22  # made by hand: drift

    refused = migrate(workspace, folder, accept_drift=True)

    assert refused["code"] == 14, refused
    assert 'relation "t1_id" already exists' in refused["text"]
    assert pg_query(database, index) == [before]
    assert history(workspace, folder) == [(1, "apply"), (None, "accept_drift")]
