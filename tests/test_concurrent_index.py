"""CREATE INDEX CONCURRENTLY on PostgreSQL: it never deadlocks with a worker of ours waiting
to own the database.

Real nodes and workers on a fresh database of the machine's server (skipped only when no
server answers), a second worker in a runtime directory of its own standing for one on
another host.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install .[test])")

from tests import test_postgres_node  # noqa: E402
from tests.conftest import kill_workers, stop_nodes  # noqa: E402
from tests.support import Workspace, request, wait_until  # noqa: E402
from tests.test_postgres_node import pg_query  # noqa: E402

database = test_postgres_node.database  # the fixture: a fresh database for each test

OURS = "migrations worker pid %"  # the application_name of every session of our workers
INDEX_VALID = (
    "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
    " WHERE i.relname = %s"
)


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


def index_migration(folder: Path, index_sql: str) -> None:
    """Version 2: `index_sql`, outside a transaction, as the file says."""
    (folder / "0002_index.sql").write_text(
        f"-- migrate:up transaction:false\n{index_sql}\n"
        "-- migrate:down transaction:false\nDROP INDEX CONCURRENTLY IF EXISTS t1_id;\n")


def test_an_index_built_concurrently_never_waits_for_a_worker_waiting_to_own_the_database(
    workspace, database, other_host
):
    folder = workspace.root / "migrations"
    table_migration(folder, ", ".join(f"({n})" for n in range(1000)))
    index_migration(folder, "CREATE INDEX CONCURRENTLY t1_id ON t1 (id);")
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
