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
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from broker.errors import (
    CRASH,
    MIGRATION_FAILED,
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
from worker.stores.interface import KEEP_REPLIES, Event, TrackingTableMissing, tracking_tables

TRACKING = tracking_tables()
# A product defect seen on MariaDB (Backend.defect), to be fixed: a table dropped by hand stays
# in the store's cache of existing tables, so reading a stored reply hits error 1146.
# Why a test does not run on MariaDB (Backend.only): its premise does not hold there.
PRAGMA_PROBE = ("the session probe changes and reads SQLite PRAGMAs outside PostgreSQL;"
                " no MariaDB probe is written")
EVICTED = "schema_migration_evicted"  # pruned replies, one row per node


@pytest.fixture
def node(tmp_path: Path, backend: Backend) -> Node:
    return Node(tmp_path, backend)


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


def test_a_companion_table_a_migration_drops_is_created_again_by_the_next_step(
    sqlite_node: Node,
) -> None:
    # The store skips looking for its tables after a step whose DDL left them be: not
    # after one whose DDL dropped one of them.
    sqlite_node.table_migration("0001_one.py", "one")  # the first step reads everything
    sqlite_node.write("0002_drop.py", f"""
        def up(db):
            db.execute("DROP TABLE {TRACKING.repeats}")
        """)
    sqlite_node.table_migration("0003_three.py", "three")

    assert sqlite_node.engine().migrate(b"m1") == applied_reply(
        entry(1, "one"), entry(2, "drop"), entry(3, "three"))
    assert set(TRACKING) <= sqlite_node.db.objects()


def test_the_newest_schema_row_is_read_again_after_a_rollback_or_another_connection(
    sqlite_node: Node,
) -> None:
    # The store remembers the schemas row it added last instead of reading the newest.
    store = sqlite_node.db.store()
    event = Event(1, "one", "apply", "c", "2026-01-01T00:00:00Z", 1.0, None, b"r")

    def add_row() -> int:
        store.record_event(event)
        return store.add_schema_row("f", "[]")

    with store.transaction():
        first = add_row()
    assert store.newest_schema_seq() == first
    with closing(sqlite3.connect(sqlite_node.db.path, isolation_level=None)) as other:
        other.execute(f"INSERT INTO {TRACKING.schemas} (history_seq, fingerprint, changes)"
                      " VALUES (1, 'g', '[]')")
    assert store.newest_schema_seq() == first + 1

    with store.transaction():
        second = add_row()
    with pytest.raises(RuntimeError), store.transaction():
        add_row()
        raise RuntimeError("the step failed")
    with store.transaction():
        store.record_event(event)  # a commit that adds no row
    assert store.newest_schema_seq() == second


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


# -- 7. no session state leaks from one migration into the next ------------------------------

# Changes to the connection a migration may make; the probe reads what the next one meets.
SQLITE_CHANGES = """
    db.execute("PRAGMA recursive_triggers = ON")
    db.execute("PRAGMA reverse_unordered_selects = ON")
    db.execute("PRAGMA ignore_check_constraints = ON")
    db.execute("PRAGMA case_sensitive_like = ON")
    db.execute("PRAGMA cache_size = 7")
    db.execute("PRAGMA busy_timeout = 1")
    db.execute("CREATE TEMP TABLE scratch (x INTEGER)")
    db.execute("CREATE TEMP TRIGGER noisy AFTER INSERT ON kept BEGIN SELECT 1; END")
"""
SQLITE_FAILING_CHANGES = """
    db.execute("PRAGMA query_only = ON")
"""
SQLITE_PROBE = """
    names = ["recursive_triggers", "reverse_unordered_selects", "ignore_check_constraints",
             "cache_size", "busy_timeout", "query_only", "foreign_keys", "synchronous"]
    seen = [(name, str(db.query(f"PRAGMA {name}")[0][0])) for name in names]
    seen.append(("like", str(db.query("SELECT 'a' LIKE 'A'")[0][0])))
    seen.append(("temporary", str(db.query("SELECT count(*) FROM temp.sqlite_master")[0][0])))
    db.execute("CREATE TEMP TABLE scratch (x INTEGER)")  # fails while the first one lives
"""
POSTGRES_CHANGES = """
    db.execute("SET search_path TO {elsewhere}")
    db.execute("SET statement_timeout = '7min'")
    db.execute("SET lock_timeout = 0")
    db.execute("CREATE TEMP TABLE scratch (x integer)")
    db.execute("PREPARE mine AS SELECT 1")
    db.execute("SELECT pg_advisory_lock(42)")
    db.execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
    db.execute("LISTEN somewhere")
"""
POSTGRES_FAILING_CHANGES = """
    db.execute("SET default_transaction_read_only = on")
"""
POSTGRES_PROBE = """
    names = ["search_path", "statement_timeout", "lock_timeout",
             "default_transaction_read_only"]
    seen = [(name, db.query("SELECT current_setting(?)", (name,))[0][0]) for name in names]
    seen.append(("user", db.query("SELECT current_user")[0][0]))
    seen.append(("prepared", str(db.query(
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'mine'")[0][0])))
    seen.append(("advisory", str(db.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42"
        " AND pid = pg_backend_pid()")[0][0])))
    seen.append(("cursors", str(db.query("SELECT count(*) FROM pg_cursors")[0][0])))
    seen.append(("listening", str(db.query("SELECT count(*) FROM pg_listening_channels()")[0][0])))
    db.execute("CREATE TEMP TABLE scratch (x integer)")  # fails while the first one lives
"""


class SessionProbe:
    """A migration that changes its session (in up or down, failing or not), and a probe
    migration that records the session the next migration meets."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.postgres = isinstance(node.db, PostgresBackend)
        self.elsewhere = f"{node.db.schema}_elsewhere" if self.postgres else ""
        if self.postgres:
            node.db.query(f"CREATE SCHEMA {self.elsewhere}")
        self.changer = node.folder / "0001_changes.py"
        probe = POSTGRES_PROBE if self.postgres else SQLITE_PROBE
        self.probe_source = (
            "def up(db):\n" + textwrap.indent(textwrap.dedent(probe), "    ")
            + '    db.execute("CREATE TABLE probe (name TEXT, value TEXT)")\n'
            + '    db.executemany("INSERT INTO probe VALUES (?, ?)", seen)\n'
            + '\n\ndef down(db):\n    db.execute("DROP TABLE probe")\n'
        )
        self._requests = 0

    def write_changer(self, direction: str, fails: bool) -> None:
        changes = POSTGRES_CHANGES if self.postgres else SQLITE_CHANGES
        changes = textwrap.dedent(changes.format(elsewhere=self.elsewhere))
        if fails:
            changes += textwrap.dedent(
                POSTGRES_FAILING_CHANGES if self.postgres else SQLITE_FAILING_CHANGES)
            changes += 'raise RuntimeError("fails after changing its session")\n'
        benign = 'db.execute("CREATE TABLE IF NOT EXISTS kept (x INTEGER)")\n'
        up, down = (benign + changes, "pass\n") if direction == "up" else (benign, changes)
        self.changer.write_text("def up(db):\n" + textwrap.indent(up, "    ")
                                + "\n\ndef down(db):\n" + textwrap.indent(down, "    "))

    def change(self, engine: Engine, direction: str) -> dict[str, Any]:
        """Run the changing migration's up (and, for `down`, then its down); returns the
        last reply. The file goes unless it is applied, so that only the probe is pending."""
        body = outcome(lambda: engine.migrate(self._next_id()))
        if direction == "down":
            assert body["type"] == "migrations_applied", body
            body = outcome(lambda: engine.rollback(self._next_id()))
        if 1 not in self.node.db.versions():
            self.changer.unlink()
        return body

    def probe(self, engine: Engine) -> list[tuple]:
        """The session the next migration meets, as the probe migration recorded it; the
        probe is rolled back afterwards."""
        probe = self.node.write("0002_probe.py", self.probe_source)
        migrated = outcome(lambda: engine.migrate(self._next_id()))
        assert migrated["type"] == "migrations_applied" and migrated["count"] == 1, migrated
        seen = self.node.db.query(
            f"SELECT name, value FROM {qualified(self.node.db, 'probe')} ORDER BY name")
        assert engine.rollback(self._next_id())["version"] == 2
        probe.unlink()
        return seen

    def _next_id(self) -> bytes:
        self._requests += 1
        return b"probe-%d" % self._requests

    def close(self) -> None:
        if self.elsewhere:
            self.node.db.query(f"DROP SCHEMA IF EXISTS {self.elsewhere} CASCADE")


@pytest.mark.parametrize("fails", [False, True], ids=["succeeds", "fails"])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_each_migration_meets_the_session_a_new_worker_has(
    node: Node, direction: str, fails: bool
) -> None:
    node.db.only("sqlite", "postgresql", why=PRAGMA_PROBE)
    session = SessionProbe(node)
    try:
        fresh = session.probe(node.engine())  # what a newly started worker's session is
        session.write_changer(direction, fails)
        engine = node.engine()
        body = session.change(engine, direction)
        assert (body["type"] == "error") == fails, body
        if fails:
            assert body["code"] == MIGRATION_FAILED
            assert "fails after changing its session" in body["text"]

        assert session.probe(engine) == fresh  # the same worker, right after
        assert session.probe(node.engine()) == fresh  # a restarted one
    finally:
        session.close()
    if isinstance(node.db, PostgresBackend):
        assert dict(fresh)["search_path"] == node.db.schema  # the URL's options stay
        # What the migration's statements wait for a lock: the default, SET LOCAL each time.
        assert dict(fresh)["lock_timeout"] == "3s"


def test_a_failed_migration_that_set_query_only_leaves_the_next_rollback_working(
    sqlite_node: Node,
) -> None:
    """The review's SQLite case."""
    node = sqlite_node
    node.table_migration("0001_one.py", "one")
    node.write("0002_read_only.py", """
        def up(db):
            db.execute("PRAGMA query_only = 1")
            raise RuntimeError("gives up")
        """)
    engine = node.engine()
    failed = outcome(lambda: engine.migrate(b"m1"))
    assert failed["code"] == MIGRATION_FAILED and failed["applied"] == [entry(1, "one")]
    (node.folder / "0002_read_only.py").unlink()

    assert engine.rollback(b"r1") == {"type": "migration_rolled_back", "version": 1,
                                      "name": "one"}
    assert node.db.versions() == []


def test_a_search_path_set_by_one_migration_does_not_move_the_next_ones_tables(
    pg_node: Node,
) -> None:
    """The review's PostgreSQL case, and the owner lock and lock_timeout kept through it."""
    node = pg_node
    other = f"{node.db.schema}_other"
    node.db.query(f"CREATE SCHEMA {other}")
    try:
        node.write("0001_elsewhere.py", f"""
            def up(db):
                db.execute("SET search_path TO {other}")
            """)
        node.table_migration("0002_two.py", "two")
        store = node.db.store()
        store.acquire_owner(b"")
        engine = Engine(store, Catalog(node.folder))

        assert engine.migrate(b"m1")["count"] == 2

        assert node.db.tables() == {"two"}
        assert node.db.relations(other) == set()
        held = node.db.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                             " AND granted AND pid = %s", (store.connection.info.backend_pid,))
        assert held == [(1,)]  # the owner lock, and only it
        assert store.connection.execute("SHOW lock_timeout").fetchone() == ("5s",)
        assert store.connection.execute("SHOW search_path").fetchone() == (node.db.schema,)
    finally:
        node.db.query(f"DROP SCHEMA IF EXISTS {other} CASCADE")


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
    monkeypatch.setattr(f"worker.stores.{node.db.name.replace('postgresql', 'postgres')}.store"
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
    dry = outcome(lambda: engine.migrate(request_id(b"node-one", 2), Params({"dry_run": True})))
    if node.db.name == "mariadb":  # a dry run stops before DDL, which would commit at once
        assert dry["code"] == PRECONDITION_FAILED and dry["dry_run"] is True, dry
        return
    assert dry["count"] == 1


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
    from worker.stores.sqlite.store import SqliteStore

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


def test_a_dropped_tracking_tables_advice_counts_only_what_recorded_a_migration() -> None:
    def event(version: int, action: str) -> Event:
        return Event(version, f"m{version}", action, "c", "2026-12-06T00:00:00.000Z", 1.0,
                     None, None)

    refusal = TrackingTableMissing("schema_migrations", ["schema_migration_history"], [
        event(1, "apply"), event(2, "lock_timeout"), event(2, "apply"),
        event(3, "lock_timeout"), event(4, "drop_invalid_index"),
    ])

    assert "the history says versions 1, 2 are applied" in refusal.text
    assert "send baseline with to: 2" in refusal.text
