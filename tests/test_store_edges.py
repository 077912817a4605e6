"""The stores at their edges: tracking tables dropped by hand, a migration's session state,
a database kept busy by a reader, and a resend whose stored reply was pruned.

Engine tests run on both backends (a SQLite file, a PostgreSQL schema: tests/backends.py),
looked into through another connection; the end-to-end ones run real nodes and workers on a
SQLite file (tests/support.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from broker.errors import (
    CRASH,
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
    ReplyError,
)
from tests.backends import Backend, PostgresBackend, SqliteBackend
from tests.support import PROCESS_TIMEOUT_S, PROJECT, request
from tests.test_engine import Node, applied_reply, entry, outcome
from worker.catalog import Catalog
from worker.engine import Engine
from worker.params import Params
from worker.store import KEEP_REPLIES, tracking_tables

TRACKING = tracking_tables()
EVICTED = "schema_migration_evicted"  # pruned replies, one row per node


@pytest.fixture
def node(tmp_path: Path, backend: Backend) -> Node:
    return Node(tmp_path, backend)


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[Node]:
    db = SqliteBackend(tmp_path / "db.sqlite")
    try:
        yield Node(tmp_path, db)
    finally:
        db.close()


@pytest.fixture
def pg_node(tmp_path: Path, pg_database: str) -> Iterator[Node]:
    db = PostgresBackend(pg_database)
    try:
        yield Node(tmp_path, db)
    finally:
        db.close()


def qualified(db: Backend, table: str) -> str:
    """A table of the backend's, as another program names it."""
    return f"{db.schema}.{table}" if isinstance(db, PostgresBackend) else table


def drop(db: Backend, *tables: str) -> None:
    """Drop tables by hand, as a person at the sqlite3 shell or psql would."""
    if isinstance(db, SqliteBackend):
        with closing(sqlite3.connect(db.path, isolation_level=None)) as connection:
            for table in tables:
                connection.execute(f"DROP TABLE {table}")
        return
    for table in tables:
        db.query(f"DROP TABLE {qualified(db, table)}")


def request_id(node_id: bytes, counter: int) -> bytes:
    """A request id as broker/client.py makes one: the node's 8 bytes, then a counter."""
    return node_id + counter.to_bytes(8, "big")


def stored_writes(engine: Engine, node_id: bytes, counters: range) -> None:
    """Writes of a node whose replies are stored: rollbacks to a version nobody has, each
    answered (and its answer kept) with error 22. (A migrate with nothing to apply keeps
    no reply: it changed nothing, so running it again is the same.)"""
    for counter in counters:
        body = outcome(lambda counter=counter: engine.rollback(
            request_id(node_id, counter), Params({"to": 99})))
        assert body["code"] == PRECONDITION_FAILED, body


# -- 6. tracking tables dropped by hand -----------------------------------------------------


@pytest.mark.parametrize("dropped", [
    (TRACKING.replies,),
    (TRACKING.history,),
    (TRACKING.replies, TRACKING.history, EVICTED),
])
def test_companion_tables_dropped_by_hand_are_created_again_by_the_next_write(
    node: Node, dropped: tuple[str, ...]
) -> None:
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    assert engine.migrate(b"m1") == applied_reply(entry(1, "one"))

    drop(node.db, *dropped)
    node.table_migration("0002_two.py", "two")

    # The same store, which had seen every table: the next write puts them back.
    assert engine.migrate(b"m2") == applied_reply(entry(2, "two"))
    assert set(TRACKING) <= node.db.objects()
    assert [row[1] for row in node.db.stored_replies()][-1] == b"m2"
    assert engine.migrate(b"m2") == applied_reply(entry(2, "two"))  # its stored reply
    assert node.db.versions() == [1, 2]
    assert engine.rollback(b"r1")["version"] == 2
    assert node.db.versions() == [1]


@pytest.mark.parametrize("restarted", [False, True], ids=["same worker", "restarted"])
def test_a_tracking_table_dropped_by_hand_is_refused_naming_it_until_baseline(
    node: Node, restarted: bool
) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"m1")
    drop(node.db, TRACKING.migrations)
    if restarted:
        engine = node.engine()
    reader = Engine(node.db.store(), Catalog(node.folder))

    refusals = [
        outcome(lambda: engine.migrate(b"m2")),
        outcome(lambda: engine.migrate(b"dry", Params({"dry_run": True}))),
        outcome(lambda: engine.rollback(b"r1")),
        outcome(lambda: reader.status(b"s1")),
        outcome(lambda: reader.validate(b"v1")),
    ]

    for body in refusals:
        assert body["code"] == PRECONDITION_FAILED, body
        assert body["text"].startswith("the tracking table schema_migrations is missing while")
        assert "history says versions 1, 2 are applied" in body["text"]
        assert "send baseline with to: 2" in body["text"]
    assert refusals[1]["dry_run"] is True
    assert node.db.tables() == {"one", "two"}  # nothing ran again, nothing rolled back
    assert TRACKING.migrations not in node.db.objects()

    # baseline, the recovery the text names, makes the table again and records them.
    baselined = engine.baseline(b"b1", Params({"to": 2}))
    assert baselined["count"] == 2
    assert node.db.versions() == [1, 2]
    assert engine.migrate(b"m3") == applied_reply()
    assert reader.status(b"s2")["migrations"] == [
        {"version": 1, "name": "one", "applied": True},
        {"version": 2, "name": "two", "applied": True},
    ]
    # The refusal was not stored: the same request, sent again, now runs.
    assert engine.migrate(b"m2") == applied_reply()


def test_every_tracking_table_dropped_is_a_new_database(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    engine.migrate(b"m1")
    drop(node.db, *TRACKING)
    drop(node.db, "one")

    assert engine.migrate(b"m2") == applied_reply(entry(1, "one"))
    assert node.db.versions() == [1]


def test_a_node_whose_worker_saw_its_tables_dropped_carries_on(workspace) -> None:
    """The review's case: a running worker, tables dropped at the sqlite3 shell."""
    node = workspace.live()
    node.send(request("migrate", 1))
    assert node.replies(1)[0]["count"] == 2
    drop(SqliteBackend(workspace.db), TRACKING.replies, EVICTED)

    node.send(request("rollback", 2))
    assert node.replies(1)[0] == {"type": "migration_rolled_back", "in_reply_to": 2,
                                  "version": 2, "name": "add_posts_table"}

    drop(SqliteBackend(workspace.db), TRACKING.migrations)
    node.send(request("migrate", 3), request("baseline", 4, to=1), request("migrate", 5))
    refused, baselined, migrated = node.replies(3)
    assert refused["code"] == PRECONDITION_FAILED
    assert "schema_migrations is missing" in refused["text"]
    assert "the history says version 1 is applied" in refused["text"]
    assert baselined["count"] == 1
    assert migrated["migrations"] == [{"version": 2, "name": "add_posts_table",
                                       "status": "applied"}]
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "create_users"), (2, "add_posts_table")]


# -- 9. busy is 11, at COMMIT too -----------------------------------------------------------


def test_a_reader_holding_a_snapshot_through_commit_is_error_11_and_nothing_is_recorded(
    sqlite_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = sqlite_node
    node.db.wait_briefly_for_locks(monkeypatch)
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    engine.status(b"s0")  # the file exists (rollback journal: engine tests never make WAL)
    reader = sqlite3.connect(node.db.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
        body = outcome(lambda: engine.migrate(b"busy"))
    finally:
        reader.close()

    assert body["code"] == TEMPORARILY_UNAVAILABLE, body
    assert "database is locked" in body["text"] and "try again" in body["text"]
    assert node.db.versions() == []
    assert node.db.tables() == set()
    assert node.db.stored_replies() == []
    assert engine.migrate(b"busy") == applied_reply(entry(1, "one"))


def test_a_reader_on_a_rollback_journal_database_gets_a_migrating_node_error_11(
    workspace,
) -> None:
    """The review's case, through a real node and worker; the worker's own busy timeout."""
    with closing(sqlite3.connect(workspace.db, isolation_level=None)) as setup:
        setup.execute("CREATE TABLE kept (x INTEGER)")  # an existing, rollback-journal file
    reader = sqlite3.connect(workspace.db, isolation_level=None)
    node = workspace.live()
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM kept").fetchall()
        node.send(request("migrate", 1))
        refused = node.replies(1)[0]
    finally:
        reader.close()

    assert refused["code"] == TEMPORARILY_UNAVAILABLE, refused
    assert "database is locked" in refused["text"]
    assert "applied" not in refused
    node.send(request("status", 2), request("health", 3), request("migrate", 4))
    status, health, migrated = node.replies(3)
    assert [m["applied"] for m in status["migrations"]] == [False, False]
    assert health["journal_mode"] == "delete"
    assert migrated["count"] == 2
    assert node.finish() == 0


# -- 11. a resend whose stored reply was pruned ----------------------------------------------


@pytest.fixture
def keep_two(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores keep 2 replies instead of 10,000 (as test_engine's pruning test does)."""
    monkeypatch.setattr(f"worker.{node.db.name.replace('postgresql', 'postgres')}_store"
                        ".KEEP_REPLIES", 2)


def test_a_resent_baseline_whose_reply_was_pruned_is_told_so_not_error_22(
    node: Node, keep_two: None
) -> None:
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    first = request_id(b"node-one", 7)
    assert engine.baseline(first, Params({"to": 1}))["count"] == 1
    stored_writes(engine, b"node-two", range(3))  # another node's writes push it out

    resent = outcome(lambda: node.engine().baseline(first, Params({"to": 1})))

    assert resent["code"] == CRASH, resent
    assert resent["text"] == (
        f"request {first.hex()} was answered before, but its stored reply is gone (the"
        f" last {KEEP_REPLIES:,} are kept), so it was not run again: ask for status or"
        " history to see what it did")
    assert [row[1] for row in node.db.stored_replies()] == [
        request_id(b"node-two", 1), request_id(b"node-two", 2)]


def test_a_resent_migrate_whose_reply_was_pruned_does_not_apply_files_added_since(
    node: Node, keep_two: None
) -> None:
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    sent = request_id(b"node-one", 3)
    assert engine.migrate(sent) == applied_reply(entry(1, "one"))
    stored_writes(engine, b"node-two", range(2))
    node.table_migration("0002_two.py", "two")

    resent = outcome(lambda: engine.migrate(sent))

    assert resent["code"] == CRASH and "stored reply is gone" in resent["text"]
    assert node.db.versions() == [1]
    assert node.db.tables() == {"one"}
    # The node's next write, and other nodes' writes, run as ever.
    assert engine.migrate(request_id(b"node-one", 4)) == applied_reply(entry(2, "two"))
    assert engine.rollback(request_id(b"node-333", 0))["version"] == 2
    assert engine.migrate(request_id(b"node-one", 2), Params({"dry_run": True}))["count"] == 1


def test_the_pruned_replies_leave_one_row_per_node(node: Node, keep_two: None) -> None:
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    for counter in range(5):
        stored_writes(engine, b"node-one", range(counter, counter + 1))
        stored_writes(engine, b"node-two", range(counter, counter + 1))

    remembered = node.db.query(
        f"SELECT node, request_id FROM {qualified(node.db, EVICTED)} ORDER BY node")
    assert [(bytes(a), bytes(b)) for a, b in remembered] == [
        (b"node-one", request_id(b"node-one", 3)), (b"node-two", request_id(b"node-two", 3))]


def test_a_node_resending_to_a_new_worker_after_its_reply_was_pruned_is_told_so(
    workspace,
) -> None:
    """A real node's own resend: its worker dies right after committing a baseline, and
    before the next worker starts, 10,000 other replies are stored by the store's own code
    (as 10,000 writes of other nodes would); the resent baseline must not get error 22."""
    from worker.sqlite_store import SqliteStore

    address = f"ipc://{workspace.runtime}/standalone.sock"
    command = [sys.executable, "-m", "worker", "--db", str(workspace.db), "--bind", address]
    trigger = workspace.root / "crash-now"
    crashing = subprocess.Popen(
        command, cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**workspace.env, "MIGRATIONS_TEST_CRASH_AFTER_COMMIT": str(trigger)},
    )
    node = workspace.live("--connect", address)
    second = None
    try:
        node.send(request("status", 1))
        assert node.replies(1)[0]["type"] == "migration_status"
        trigger.touch()
        node.send(request("baseline", 2, to=1))
        assert crashing.wait(timeout=PROCESS_TIMEOUT_S) < 0  # killed after its commit
        store = SqliteStore(workspace.db)
        try:
            with store.transaction():
                for counter in range(KEEP_REPLIES):
                    store.store_reply(request_id(b"others..", counter), {"type": "x"})
        finally:
            store.close()
        second = subprocess.Popen(command, cwd=PROJECT, env=workspace.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)

        resent = node.replies(1)[0]
        assert resent["code"] == CRASH, resent
        assert "stored reply is gone" in resent["text"]
        assert workspace.recorded() == [(1, "create_users")]
        assert node.finish() == 0
    finally:
        for worker in (crashing, second):
            if worker is not None and worker.poll() is None:
                worker.kill()
            if worker is not None:
                worker.wait(timeout=PROCESS_TIMEOUT_S)


def test_a_resend_is_told_its_reply_is_gone_only_for_the_id_pruned(node: Node) -> None:
    store = node.db.store()
    with store.transaction():
        store.store_reply(request_id(b"node-one", 5), {"type": "x"})
    module = sys.modules[type(store).__module__]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "KEEP_REPLIES", 1)
        with store.transaction():
            store.store_reply(request_id(b"node-two", 0), {"type": "y"})

    with pytest.raises(ReplyError):
        store.stored_reply(request_id(b"node-one", 5))
    for never_sent in (request_id(b"node-one", 4), request_id(b"node-one", 6), b"node-one"):
        assert store.stored_reply(never_sent) is None
