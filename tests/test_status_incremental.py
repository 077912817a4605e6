"""A status patched from the last one (worker/status.py) is the reply a full read gives.

Each test keeps a reader engine, as the worker's socket thread does (a second connection on
the database), while the writer engine or another program changes the database between two
statuses; after each change the reader's reply must equal, to the byte, that of an engine
started afresh. On SQLite the reader patches its kept reply where it can, and the tests say
when it must read everything instead; on PostgreSQL and MariaDB it always reads everything.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from broker import codec
from broker.errors import PRECONDITION_FAILED
from tests.backends import Backend, PostgresBackend, SqliteBackend
from tests.test_engine import Node, outcome
from worker.catalog import Catalog
from worker.engine import Engine
from worker.params import Params
from worker.stores.interface import tracking_tables

TRACKING = tracking_tables()
SETTLED_S = 60  # how far back the folder's times are set: older than the catalog's racy window


@pytest.fixture
def node(tmp_path: Path, backend: Backend) -> Node:
    return Node(tmp_path, backend)  # the backend fixture closes every store at teardown


class Reader:
    """The worker's read engine on a second connection, counting its full reads."""

    def __init__(self, node: Node, writer: Engine) -> None:
        store = node.db.keep(writer.store.reader())
        self.engine = Engine(store, Catalog(node.folder, split_statements=store.split_statements))
        self.full_reads = 0
        read_all = store.applied

        def counted() -> list:
            self.full_reads += 1
            return read_all()

        store.applied = counted

    def status(self) -> dict[str, Any]:
        self.engine.new_batch()
        return outcome(lambda: self.engine.status(b"s"))


def fresh_status(node: Node) -> dict[str, Any]:
    """What a newly started worker answers: every row read."""
    return outcome(lambda: node.engine().status(b"f"))


def settle(folder: Path) -> None:
    """Date the folder and its files back, as written well before: the catalog keeps a
    listing (and a status its reply) only once it is older than its racy window."""
    then = time.time() - SETTLED_S
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (then, then))


def by_hand(db: Backend, sql: str) -> None:
    """One statement from another program, committed at once; `{}` in `sql` is a tracking
    table's name as that program writes it."""
    if isinstance(db, SqliteBackend):
        with closing(sqlite3.connect(db.path, isolation_level=None)) as connection:
            connection.execute(sql)
        return
    db.query(sql)


def table(db: Backend, name: str) -> str:
    return f"{db.schema}.{name}" if isinstance(db, PostgresBackend) else name


def assert_exact(reader: Reader, node: Node, patched: bool | None = None) -> dict[str, Any]:
    """The reader's status is a fresh engine's, to the byte; with `patched` given, on
    SQLite it was patched (True) or read in full (False)."""
    before = reader.full_reads
    got = reader.status()
    assert codec.pack(got) == codec.pack(fresh_status(node))
    if patched is not None and node.db.name == "sqlite":
        assert (reader.full_reads == before) is patched
    return got


def applied_flags(reply: dict[str, Any]) -> list[bool]:
    return [entry["applied"] for entry in reply["migrations"]]


def migrations(node: Node, count: int) -> Engine:
    """`count` table migrations, settled, and the writer's engine."""
    for version in range(1, count + 1):
        node.table_migration(f"{version:04d}_t{version}.py", f"t{version}")
    settle(node.folder)
    return node.engine()


def test_status_patched_after_each_apply_and_rollback_is_what_a_full_read_gives(node: Node) -> None:
    writer = migrations(node, 6)
    reader = Reader(node, writer)
    assert_exact(reader, node, patched=False)  # nothing kept yet
    steps: list[Callable[[], Any]] = [
        lambda: writer.migrate(b"m1", Params({"to": 2})),
        lambda: writer.migrate(b"m2", Params({"to": 5})),
        lambda: writer.rollback(b"r1"),
        lambda: writer.rollback(b"r2", Params({"to": 1})),
        lambda: writer.migrate(b"m3"),
        lambda: writer.rollback(b"r3", Params({"steps": 3})),
    ]
    for step in steps:
        step()
        assert_exact(reader, node, patched=True)
    assert applied_flags(reader.status()) == [True, True, True, False, False, False]


def test_a_status_with_nothing_changed_is_the_same_reply(node: Node) -> None:
    writer = migrations(node, 2)
    writer.migrate(b"m1")
    reader = Reader(node, writer)
    first = reader.status()
    assert reader.status() is first


def test_a_row_deleted_by_hand_is_read_in_full(node: Node) -> None:
    writer = migrations(node, 3)
    writer.migrate(b"m1")
    reader = Reader(node, writer)
    reader.status()

    by_hand(node.db, f"DELETE FROM {table(node.db, TRACKING.migrations)} WHERE version = 2")

    # No event names it: the patch cannot tell what changed.
    assert applied_flags(assert_exact(reader, node, patched=False)) == [True, False, True]


def test_a_row_deleted_by_hand_beside_a_rollback_is_read_in_full(node: Node) -> None:
    writer = migrations(node, 4)
    writer.migrate(b"m1", Params({"to": 3}))
    reader = Reader(node, writer)
    reader.status()

    by_hand(node.db, f"DELETE FROM {table(node.db, TRACKING.migrations)} WHERE version = 1")
    writer.rollback(b"r1")

    # One event (3's rollback), and one row fewer than it accounts for.
    assert applied_flags(assert_exact(reader, node, patched=False)) == [False, True, False, False]


def test_rows_deleted_and_inserted_by_hand_beside_a_rollback_are_read_in_full(
    node: Node
) -> None:
    writer = migrations(node, 4)
    writer.migrate(b"m1", Params({"to": 3}))
    reader = Reader(node, writer)
    reader.status()

    writer.rollback(b"r1")
    tracking = table(node.db, TRACKING.migrations)
    by_hand(node.db, f"DELETE FROM {tracking} WHERE version = 1")
    by_hand(node.db, f"INSERT INTO {tracking} (version, name, checksum, applied_at,"
                     " execution_ms, applied_seq) VALUES (4, 't4', '', '', 0, 9)")

    # One event (3's rollback), and a count the events account for: the sum does not.
    assert applied_flags(assert_exact(reader, node, patched=False)) == [False, True, False, True]


def test_a_tracking_table_dropped_by_hand_is_refused_then_baseline_is_patched_in(
    node: Node
) -> None:
    writer = migrations(node, 4)
    writer.migrate(b"m1", Params({"to": 2}))
    reader = Reader(node, writer)
    reader.status()

    by_hand(node.db, f"DROP TABLE {table(node.db, TRACKING.migrations)}")
    refused = reader.status()
    assert refused["code"] == PRECONDITION_FAILED, refused
    assert refused == fresh_status(node)

    writer.baseline(b"b1", Params({"to": 3}))
    assert applied_flags(assert_exact(reader, node, patched=False)) == [True, True, True, False]
    writer.migrate(b"m2")
    assert applied_flags(assert_exact(reader, node, patched=True)) == [True] * 4


def test_a_history_deleted_by_hand_is_read_in_full(node: Node) -> None:
    writer = migrations(node, 4)
    writer.migrate(b"m1", Params({"to": 2}))
    reader = Reader(node, writer)
    reader.status()

    by_hand(node.db, f"DELETE FROM {table(node.db, TRACKING.history)}")
    writer.migrate(b"m2", Params({"to": 3}))

    # The event the kept reply was read at is gone: what came since cannot be told.
    assert applied_flags(assert_exact(reader, node, patched=False)) == [True, True, True, False]
    writer.migrate(b"m3")
    assert_exact(reader, node, patched=True)


def test_an_applied_migration_without_its_file_renamed_by_hand_is_read_in_full(
    node: Node
) -> None:
    node.db.only("sqlite", why="the servers' change stamp misses an UPDATE by hand (their"
                 " stores' data_version)")
    writer = migrations(node, 2)
    writer.migrate(b"m1")
    (node.folder / "0001_t1.py").unlink()
    settle(node.folder)
    reader = Reader(node, writer)
    assert reader.status()["migrations"][0] == {"version": 1, "name": "t1", "applied": True}

    by_hand(node.db,
            f"UPDATE {table(node.db, TRACKING.migrations)} SET name = 'renamed' WHERE version = 1")

    assert assert_exact(reader, node, patched=False)["migrations"][0]["name"] == "renamed"


def test_a_migration_added_to_the_folder_is_read_in_full(node: Node) -> None:
    writer = migrations(node, 2)
    writer.migrate(b"m1")
    reader = Reader(node, writer)
    reader.status()

    node.table_migration("0003_t3.py", "t3")
    settle(node.folder)
    writer.migrate(b"m2")

    assert applied_flags(assert_exact(reader, node, patched=False)) == [True, True, True]


def test_a_repeatable_applied_between_two_statuses_is_listed_as_a_full_read_lists_it(
    node: Node
) -> None:
    writer = migrations(node, 2)
    node.write("R__view.sql", "DROP VIEW IF EXISTS v;\nCREATE VIEW v AS SELECT 1 AS one;\n")
    settle(node.folder)
    writer.migrate(b"m1", Params({"to": 1}))
    reader = Reader(node, writer)
    assert reader.status()["repeatables"][0]["state"] == "pending"

    writer.migrate(b"m2")

    got = assert_exact(reader, node, patched=True)
    assert got["repeatables"][0]["state"] == "applied"
    assert applied_flags(got) == [True, True]


def test_a_migration_stopped_partway_and_resolved_is_listed_as_a_full_read_lists_it(
    node: Node
) -> None:
    node.db.only("mariadb", why="a migration stops partway only where DDL commits at once")
    node.write("0001_broken.py", """
        def up(db):
            db.execute("CREATE TABLE broken (x INTEGER)")
            raise KeyError("missing")
        """)
    settle(node.folder)
    writer = node.engine()
    reader = Reader(node, writer)
    reader.status()
    failed = outcome(lambda: writer.migrate(b"m1"))
    assert failed["partial"] == {"action": "apply", "statements_done": 1}, failed
    assert "partial" in assert_exact(reader, node)["migrations"][0]

    writer.resolve(b"x1", Params({"version": 1, "applied": True}))

    assert assert_exact(reader, node)["migrations"] == [
        {"version": 1, "name": "broken", "applied": True}]


def test_more_events_than_a_patch_takes_are_read_in_full(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.engine.MOST_PATCHED_EVENTS", 2)
    writer = migrations(node, 5)
    reader = Reader(node, writer)
    reader.status()
    writer.migrate(b"m1", Params({"to": 2}))
    assert_exact(reader, node, patched=True)

    writer.migrate(b"m2")

    assert applied_flags(assert_exact(reader, node, patched=False)) == [True] * 5


def test_a_status_refused_keeps_nothing_to_patch(node: Node) -> None:
    writer = migrations(node, 2)
    writer.migrate(b"m1", Params({"to": 1}))
    reader = Reader(node, writer)
    reader.status()
    node.write("0001_t1_again.py", "def up(db):\n    pass\n")  # a second version 1
    settle(node.folder)
    assert reader.status()["code"] == PRECONDITION_FAILED
    (node.folder / "0001_t1_again.py").unlink()
    settle(node.folder)

    writer.migrate(b"m2")

    assert applied_flags(assert_exact(reader, node, patched=False)) == [True, True]

