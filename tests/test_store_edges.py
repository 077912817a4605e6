"""The stores at their edges: tracking tables dropped by hand, a migration's session state,
a database kept busy by a reader, and a resend whose stored reply was pruned.

Engine tests run on both backends (a SQLite file, a PostgreSQL schema: tests/backends.py),
looked into through another connection; the end-to-end ones run real nodes and workers on a
SQLite file (tests/support.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from broker.errors import (
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
)
from tests.backends import Backend, PostgresBackend, SqliteBackend
from tests.support import request
from tests.test_engine import Node, applied_reply, entry, outcome
from worker.engine import Engine
from worker.params import Params
from worker.store import tracking_tables

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


