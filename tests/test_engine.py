"""Tests for worker.engine: migrate, rollback and status against a real database.

Every test gets its own folder of small migration files and runs once on a SQLite file and
once on a PostgreSQL schema (tests/backends.py), looking into the database through a
separate connection, as another program would. Migrations here use `?` parameters and SQL
both accept; the few tests about SQLite alone (its trigger syntax) use `sqlite_node`.
"""

from __future__ import annotations

import re
import select
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker import codec
from broker.errors import (
    CRASH,
    MIGRATION_FAILED,
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
    ReplyError,
)
from tests.backends import Backend
from tests.support import PROCESS_TIMEOUT_S
from worker.catalog import Catalog, DuplicateVersion, checksum_of
from worker.engine import Engine, Interrupted
from worker.journal import NoJournal
from worker.params import Params
from worker.server import Job, Outbox, Writer

Reply = dict[str, Any]
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # UTC, milliseconds
# How each driver names an error, where a test checks the name.
ERRORS = {
    "sqlite": {
        "transaction control": "DatabaseError: not authorized",
        "missing table": "OperationalError: ",
        "duplicate key": "IntegrityError: ",
        "read-only": "OperationalError: attempt to write a readonly database",
    },
    "postgresql": {
        "transaction control": "TransactionControlRefused: ",
        "missing table": "UndefinedTable: ",
        "duplicate key": "UniqueViolation: ",
        "read-only": "ReadOnlySqlTransaction: cannot execute CREATE SCHEMA in a read-only"
        " transaction",
    },
    "mariadb": {
        "transaction control": "TransactionControlRefused: ",
        "missing table": "ProgrammingError: (1146, ",
        "duplicate key": "IntegrityError: (1062, ",
        "read-only": "OperationalError: (1792, 'Cannot execute statement in a READ ONLY"
        " transaction')",
    },
}

# Why a test does not run on MariaDB (Backend.only): its premise does not hold there.
DDL_COMMITS = ("its CREATE TABLE must roll back with the failed migration;"
               " MariaDB commits DDL at once")
DROP_COMMITS = ("its DROP TABLE must roll back with the failed down;"
                " MariaDB commits DDL at once")
DRY_DDL = ("a dry run of CREATE TABLE;"
           " on MariaDB a dry run stops before DDL with error 22")
NO_DEFAULT_VALUES = ("INSERT ... DEFAULT VALUES is no MariaDB syntax, and 2's CREATE TABLE"
                     " commits at once there")
NO_CONNECTION_EXECUTE = ("calls execute() on the driver's private connection;"
                         " a PyMySQL connection has none")

# -- helpers -----------------------------------------------------------------------------


class Node:
    """A migrations folder and a database (`db`: a Backend, which closes its stores)."""

    def __init__(self, root: Path, db: Backend) -> None:
        self.folder = root / "migrations"
        self.folder.mkdir()
        self.db = db

    def engine(self, should_stop: Callable[[], bool] = lambda: False) -> Engine:
        """A fresh store and catalog on this node's files, like a newly started worker
        (which cuts .sql files into statements by its database's rules)."""
        store = self.db.store()
        catalog = Catalog(self.folder, split_statements=store.split_statements)
        return Engine(store, catalog, should_stop=should_stop)

    def no_locks(self) -> dict[str, list]:
        """What a dry run that locked no existing relation adds to its reply: an empty
        `locks` on PostgreSQL (see tests/test_dry_run_locks.py), nothing on SQLite."""
        return {"locks": []} if self.db.name == "postgresql" else {}

    def errors(self, kind: str) -> str:
        """The beginning of the failure text this node's driver gives for `kind`."""
        return ERRORS[self.db.name][kind]

    def write(self, filename: str, source: str) -> Path:
        path = self.folder / filename
        path.write_text(textwrap.dedent(source))
        return path

    def table_migration(self, filename: str, table: str, *, down: bool = True) -> Path:
        """A migration creating `table` (one row in it) and, if asked, a down() dropping it."""
        source = f"""
            def up(db):
                db.execute("CREATE TABLE {table} (id INTEGER PRIMARY KEY, note TEXT)")
                db.execute("INSERT INTO {table} (id, note) VALUES (1, ?)", ("{filename}",))
            """
        if down:
            source += f"""
            def down(db):
                db.execute("DROP TABLE {table}")
            """
        return self.write(filename, source)


@pytest.fixture
def node(tmp_path: Path, backend: Backend) -> Node:
    return Node(tmp_path, backend)  # the backend fixture closes every store at teardown


def entry(version: int, name: str, status: str = "applied") -> dict[str, object]:
    return {"version": version, "name": name, "status": status}


def applied_reply(*entries: dict[str, object]) -> Reply:
    return {"type": "migrations_applied", "count": len(entries), "migrations": list(entries)}


def outcome(call: Callable[[], Reply]) -> Reply:
    """The reply body a request gets, whether the handler returned it or raised it."""
    try:
        return call()
    except ReplyError as error:
        return error.body()


def marker_migration(node: Node, filename: str, marker: Path, *, fail: bool) -> Path:
    """A migration that appends a line to `marker` (outside any transaction) when up() runs."""
    failure = '    raise RuntimeError("marked migration fails")\n' if fail else ""
    source = (
        "def up(db):\n"
        f"    with open({str(marker)!r}, 'a') as marker:\n"
        "        marker.write('ran\\n')\n"
        "    db.execute('CREATE TABLE marked (x INTEGER)')\n"
        f"{failure}"
    )
    return node.write(filename, source)


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


# -- 1. order and reply shape -------------------------------------------------------------


def test_files_written_out_of_order_are_applied_in_version_order(node: Node) -> None:
    # Each migration needs the one before it, so a wrong order fails loudly.
    node.write(
        "0003_insert_admin.py",
        """
        def up(db):
            db.execute("INSERT INTO users (id, email, role) VALUES (1, 'a@example.org', 'admin')")
        """,
    )
    node.write(
        "0001_create_users.py",
        """
        def up(db):
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
        """,
    )
    node.write(
        "0002_add_role.py",
        """
        def up(db):
            db.execute("ALTER TABLE users ADD COLUMN role TEXT")
        """,
    )

    reply = node.engine().migrate(b"r1")

    assert reply == {
        "type": "migrations_applied",
        "count": 3,
        "migrations": [
            {"version": 1, "name": "create_users", "status": "applied"},
            {"version": 2, "name": "add_role", "status": "applied"},
            {"version": 3, "name": "insert_admin", "status": "applied"},
        ],
    }
    assert list(reply) == ["type", "count", "migrations"]
    for item in reply["migrations"]:
        assert list(item) == ["version", "name", "status"]
    assert node.db.query("SELECT email, role FROM users") == [("a@example.org", "admin")]
    # applied_seq records the order of application.
    assert [(row[0], row[5]) for row in node.db.records()] == [(1, 1), (2, 2), (3, 3)]


# -- 2. pending detection -----------------------------------------------------------------


def test_a_new_file_is_the_only_migration_the_next_request_applies(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    assert engine.migrate(b"first") == applied_reply(entry(1, "one"), entry(2, "two"))
    before = node.db.records()

    node.table_migration("0003_three.py", "three")
    reply = engine.migrate(b"second")

    assert reply == applied_reply(entry(3, "three"))
    assert node.db.records()[:2] == before
    assert node.db.versions() == [1, 2, 3]
    assert node.db.tables() == {"one", "two", "three"}
    assert node.db.query("SELECT COUNT(*) FROM one") == [(1,)]  # 1 did not run again


def test_migrate_with_nothing_pending_answers_zero_and_writes_nothing(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"first")
    records, replies = node.db.records(), node.db.stored_replies()
    before = node.db.snapshot()

    reply = engine.migrate(b"second")

    assert reply == {"type": "migrations_applied", "count": 0, "migrations": []}
    assert list(reply) == ["type", "count", "migrations"]
    assert node.db.records() == records
    assert node.db.stored_replies() == replies
    assert node.db.snapshot() == before


# -- 3. a failing up() --------------------------------------------------------------------


def test_a_failing_up_leaves_nothing_and_stops_the_request(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_broken.py",
        """
        def up(db):
            db.execute("CREATE TABLE broken (x INTEGER)")
            db.execute("INSERT INTO broken VALUES (1)")
            raise ValueError("boom in up")
        """,
    )
    node.table_migration("0003_three.py", "three")

    with pytest.raises(ReplyError) as raised:
        node.engine().migrate(b"r1")

    error = raised.value
    assert error.code == MIGRATION_FAILED
    assert error.extra["applied"] == [entry(1, "one")]
    assert error.extra["failed"] == {
        "version": 2,
        "name": "broken",
        "error": "ValueError: boom in up",
    }
    assert list(error.extra["failed"]) == ["version", "name", "error"]
    body = error.body()
    assert body["type"] == "error"
    assert body["code"] == 14
    assert "ValueError: boom in up" in body["text"]
    assert node.db.versions() == [1]
    if node.db.name == "mariadb":  # its CREATE TABLE committed; its INSERT rolled back
        assert list(body) == ["type", "code", "text", "applied", "failed", "partial"]
        assert body["partial"] == {"action": "apply", "statements_done": 1}
        assert node.db.tables() == {"one", "broken"}
        assert node.db.query("SELECT x FROM broken") == []
        return
    assert list(body) == ["type", "code", "text", "applied", "failed"]
    # 2 left nothing behind, and 3 was never attempted.
    assert node.db.tables() == {"one"}


def test_a_failing_first_migration_reports_an_empty_applied_list(node: Node) -> None:
    node.write(
        "0001_broken.py",
        """
        def up(db):
            db.execute("CREATE TABLE broken (x INTEGER)")
            raise KeyError("missing")
        """,
    )
    node.table_migration("0002_two.py", "two")

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["applied"] == []
    assert body["failed"] == {"version": 1, "name": "broken", "error": "KeyError: 'missing'"}
    assert node.db.versions() == []
    if node.db.name == "mariadb":  # its CREATE TABLE committed at once
        assert body["partial"] == {"action": "apply", "statements_done": 1}
        assert node.db.tables() == {"broken"}
        return
    assert node.db.tables() == set()


def test_a_file_without_up_fails_the_request_without_recording_it(node: Node) -> None:
    node.write("0001_empty.py", "VALUE = 1\n")

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"]["version"] == 1
    assert node.db.versions() == []


# -- 4. a failing down() ------------------------------------------------------------------


def test_a_failing_down_leaves_table_rows_and_record_as_they_were(node: Node) -> None:
    node.write(
        "0001_items.py",
        """
        def up(db):
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")
            db.executemany("INSERT INTO items VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])

        def down(db):
            db.execute("DELETE FROM items")
            db.execute("DROP TABLE items")
            raise OSError("down cannot finish")
        """,
    )
    engine = node.engine()
    engine.migrate(b"r1")
    records = node.db.records()
    rows = node.db.query("SELECT id, label FROM items ORDER BY id")

    with pytest.raises(ReplyError) as raised:
        engine.rollback(b"r2")

    assert raised.value.code == MIGRATION_FAILED
    assert raised.value.extra["failed"] == {
        "version": 1,
        "name": "items",
        "error": "OSError: down cannot finish",
    }
    assert node.db.records() == records
    if node.db.name == "mariadb":  # DROP TABLE committed at once, and the DELETE with it
        assert raised.value.extra["partial"] == {"action": "rollback", "statements_done": 2}
        assert node.db.tables() == set()
        return
    assert node.db.tables() == {"items"}
    assert node.db.query("SELECT id, label FROM items ORDER BY id") == rows
    assert node.db.records() == records


# -- 5. rollback ---------------------------------------------------------------------------


def test_rollback_reverts_the_latest_migration_and_deletes_its_record(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"r1")

    reply = engine.rollback(b"r2")

    assert reply == {"type": "migration_rolled_back", "version": 2, "name": "two"}
    assert list(reply) == ["type", "version", "name"]
    assert node.db.tables() == {"one"}
    assert node.db.versions() == [1]


def test_rollback_follows_application_order_not_the_highest_version(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0003_three.py", "three")
    engine = node.engine()
    engine.migrate(b"r1")
    node.table_migration("0002_two.py", "two")  # a lower version, applied last
    allowed = Params({"allow_out_of_order": True})
    assert engine.migrate(b"r2", allowed) == applied_reply(entry(2, "two"))

    first = engine.rollback(b"r3")
    assert first == {"type": "migration_rolled_back", "version": 2, "name": "two"}
    assert node.db.tables() == {"one", "three"}
    assert node.db.versions() == [1, 3]

    second = engine.rollback(b"r4")
    assert second == {"type": "migration_rolled_back", "version": 3, "name": "three"}
    assert node.db.versions() == [1]

    third = engine.rollback(b"r5")
    assert third == {"type": "migration_rolled_back", "version": 1, "name": "one"}
    assert node.db.versions() == []
    assert node.db.tables() == set()


def test_rollback_with_nothing_applied_is_a_precondition_failure(node: Node) -> None:
    node.table_migration("0001_one.py", "one")

    with pytest.raises(ReplyError) as raised:
        node.engine().rollback(b"r1")

    assert raised.value.code == PRECONDITION_FAILED
    assert node.db.versions() == []
    assert node.db.tables() == set()


def test_rollback_of_a_migration_without_down_changes_nothing(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_forever.py", "forever", down=False)
    engine = node.engine()
    engine.migrate(b"r1")
    records = node.db.records()

    with pytest.raises(ReplyError) as raised:
        engine.rollback(b"r2")

    assert raised.value.code == PRECONDITION_FAILED
    assert "down()" in raised.value.text
    assert node.db.records() == records
    assert node.db.tables() == {"one", "forever"}
    assert node.db.query("SELECT COUNT(*) FROM forever") == [(1,)]


# -- 6. duplicate versions ------------------------------------------------------------------


def test_two_files_with_one_version_raise_duplicate_version_naming_both(
    sqlite_node: Node,
) -> None:
    # The catalog alone: no database is involved, so one backend is enough.
    sqlite_node.table_migration("0001_a.py", "a")
    sqlite_node.table_migration("1_b.py", "b")

    with pytest.raises(DuplicateVersion) as raised:
        Catalog(sqlite_node.folder).migrations()

    assert isinstance(raised.value, ReplyError)
    assert raised.value.code == PRECONDITION_FAILED
    assert "0001_a.py" in raised.value.text
    assert "1_b.py" in raised.value.text


def test_migrate_refuses_duplicate_versions_and_applies_nothing(node: Node) -> None:
    node.table_migration("0001_a.py", "a")
    node.table_migration("1_b.py", "b")
    node.table_migration("0002_c.py", "c")

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == PRECONDITION_FAILED
    assert node.db.tables() == set()
    assert node.db.versions() == []


def test_files_not_named_like_migrations_are_ignored(node: Node) -> None:
    node.table_migration("0002_two.py", "two")
    node.table_migration("0001_one.py", "one")
    node.write("__init__.py", "raise SystemExit('must not be loaded')\n")
    node.write("README.md", "# notes\n")
    node.write("notes.txt", "0003_not_a_migration\n")

    listed = Catalog(node.folder).migrations()

    assert [(m.version, m.name, Path(m.path).name) for m in listed] == [
        (1, "one", "0001_one.py"),
        (2, "two", "0002_two.py"),
    ]
    assert node.engine().migrate(b"r1") == applied_reply(entry(1, "one"), entry(2, "two"))


# -- 7. the db object: transaction control and executescript ------------------------------


@pytest.mark.parametrize("statement", ["COMMIT", "BEGIN", "ROLLBACK", "END", "commit"])
def test_a_migration_that_controls_the_transaction_fails_and_leaves_nothing(
    node: Node, statement: str
) -> None:
    # A first migration commits normally, so COMMIT/ROLLBACK were already run by the store.
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_sneaky.py",
        f"""
        def up(db):
            db.execute("CREATE TABLE sneaky (x INTEGER)")
            db.execute("INSERT INTO sneaky VALUES (1)")
            db.execute({statement!r})
            db.execute("CREATE TABLE after_{statement.lower()} (x INTEGER)")
        """,
    )

    with pytest.raises(ReplyError) as raised:
        node.engine().migrate(b"r1")

    assert raised.value.code == MIGRATION_FAILED
    assert raised.value.extra["applied"] == [entry(1, "one")]
    assert raised.value.extra["failed"]["version"] == 2
    assert node.db.versions() == [1]
    if node.db.name == "mariadb":  # CREATE TABLE committed at once; END is no statement there
        refused = "ProgrammingError: (1064, " if statement == "END" else "TransactionControl"
        assert raised.value.extra["failed"]["error"].startswith(refused)
        done = 2 if statement == "END" else 1  # an unknown statement commits at once
        assert raised.value.extra["partial"] == {"action": "apply", "statements_done": done}
        assert node.db.tables() == {"one", "sneaky"}
        return
    assert raised.value.extra["failed"]["error"].startswith(node.errors("transaction control"))
    assert node.db.tables() == {"one"}


def test_executescript_runs_every_statement_in_the_transaction_and_cannot_commit(
    node: Node,
) -> None:
    node.db.only("sqlite", "postgresql", why=NO_DEFAULT_VALUES)
    node.write(
        "0001_script.py",
        """
        def up(db):
            db.executescript('''
                CREATE TABLE a (x INTEGER); -- a comment; with ;
                INSERT INTO a VALUES (1), (2);
                /* a block; comment */ CREATE TABLE b (s TEXT DEFAULT 'c;d');
                INSERT INTO b DEFAULT VALUES
            ''')
        """,
    )
    node.write(
        "0002_commit.py",
        """
        def up(db):
            db.executescript("CREATE TABLE c (x INTEGER); INSERT INTO c VALUES (1); COMMIT;")
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["applied"] == [entry(1, "script")]
    assert body["failed"]["version"] == 2
    assert body["failed"]["error"].startswith(node.errors("transaction control"))
    assert node.db.query("SELECT x FROM a ORDER BY x") == [(1,), (2,)]
    assert node.db.query("SELECT s FROM b") == [("c;d",)]
    assert node.db.tables() == {"a", "b"}  # nothing of 2, not even before its COMMIT
    assert node.db.versions() == [1]


def test_a_migration_that_ends_the_transaction_anyway_is_reported_failed(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=NO_CONNECTION_EXECUTE)
    # Bypassing the guard through the private connection: the engine must notice.
    node.write(
        "0001_bypass.py",
        """
        def up(db):
            db.execute("CREATE TABLE bypass (x INTEGER)")
            if hasattr(db._connection, "set_authorizer"):  # SQLite's guard
                db._connection.set_authorizer(None)
            db._connection.execute("COMMIT")
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert "ended the transaction" in body["failed"]["error"]
    assert node.db.versions() == []


def test_executescript_inside_up_is_atomic(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    node.write(
        "0001_script.py",
        """
        def up(db):
            db.executescript(
                '''
                CREATE TABLE first (x INTEGER);
                CREATE TABLE second (y INTEGER);
                INSERT INTO no_such_table VALUES (1);
                CREATE TABLE fourth (z INTEGER);
                '''
            )
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"]["error"].startswith(node.errors("missing table"))
    assert "no_such_table" in body["failed"]["error"]
    assert node.db.tables() == set()
    assert node.db.versions() == []


def test_executescript_handles_triggers_strings_and_a_trailing_comment(
    sqlite_node: Node,
) -> None:
    # SQLite's trigger syntax; test_postgres_store.py has a PL/pgSQL trigger.
    sqlite_node.write(
        "0001_trigger.py",
        """
        def up(db):
            db.executescript(
                '''
                CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER);
                CREATE TABLE audit (what TEXT);
                CREATE TRIGGER orders_audit AFTER INSERT ON orders
                BEGIN
                    INSERT INTO audit VALUES ('insert; into orders');
                    INSERT INTO audit VALUES ('total=' || NEW.total);
                END;
                /* a block comment; with a semicolon */
                INSERT INTO orders (total) VALUES (42); -- the first order; comment
                -- a trailing comment; still a comment'''
            )
        """,
    )

    reply = sqlite_node.engine().migrate(b"r1")

    assert reply == applied_reply(entry(1, "trigger"))
    assert "orders_audit" in sqlite_node.db.objects()
    assert sqlite_node.db.query("SELECT what FROM audit ORDER BY rowid") == [
        ("insert; into orders",),
        ("total=42",),
    ]
    assert sqlite_node.db.query("SELECT total FROM orders") == [(42,)]


def test_db_query_and_executemany_work_inside_up(node: Node) -> None:
    node.write(
        "0001_copy.py",
        """
        def up(db):
            db.execute("CREATE TABLE src (n INTEGER)")
            db.executemany("INSERT INTO src VALUES (?)", [(1,), (2,), (3,)])
            total = db.query("SELECT SUM(n) FROM src WHERE n > ?", (1,))[0][0]
            db.execute("CREATE TABLE dst (n INTEGER)")
            db.execute("INSERT INTO dst VALUES (:n)", {"n": total})
        """,
    )

    node.engine().migrate(b"r1")

    assert node.db.query("SELECT n FROM dst") == [(5,)]


def test_savepoints_are_allowed_inside_a_migration(node: Node) -> None:
    # On PostgreSQL the failed statement aborts the transaction until ROLLBACK TO.
    node.write(
        "0001_savepoint.py",
        """
        def up(db):
            db.execute("CREATE TABLE kept (x INTEGER)")
            db.execute("SAVEPOINT attempt")
            try:
                db.execute("INSERT INTO nowhere VALUES (1)")
            except Exception:
                db.execute("ROLLBACK TO SAVEPOINT attempt")
            db.execute("RELEASE SAVEPOINT attempt")
            db.execute("INSERT INTO kept VALUES (1)")
        """,
    )

    assert node.engine().migrate(b"m1") == applied_reply(entry(1, "savepoint"))
    assert node.db.query("SELECT x FROM kept") == [(1,)]


# -- 8. status ----------------------------------------------------------------------------


def test_status_lists_every_file_in_version_order_with_applied_flags(node: Node) -> None:
    node.table_migration("0002_two.py", "two")
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    engine.migrate(b"r1")
    node.table_migration("0003_three.py", "three")

    reply = engine.status(b"s1")

    assert reply == {
        "type": "migration_status",
        "migrations": [
            {"version": 1, "name": "one", "applied": True},
            {"version": 2, "name": "two", "applied": True},
            {"version": 3, "name": "three", "applied": False},
        ],
    }
    assert list(reply) == ["type", "migrations"]
    for item in reply["migrations"]:
        assert list(item) == ["version", "name", "applied"]


def test_status_lists_an_applied_migration_whose_file_was_deleted(node: Node) -> None:
    one = node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"r1")
    one.unlink()
    node.table_migration("0003_three.py", "three")

    reply = node.engine().status(b"s1")

    assert reply["migrations"] == [
        {"version": 1, "name": "one", "applied": True},
        {"version": 2, "name": "two", "applied": True},
        {"version": 3, "name": "three", "applied": False},
    ]


def test_status_and_history_on_a_new_database_write_nothing(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()

    reply = engine.status(b"s1")
    events = engine.history(b"h1")

    assert reply == {
        "type": "migration_status",
        "migrations": [
            {"version": 1, "name": "one", "applied": False},
            {"version": 2, "name": "two", "applied": False},
        ],
    }
    assert events == {"type": "migration_history", "events": []}
    assert node.db.untouched()  # on PostgreSQL, not even the tracking tables' schema


def test_status_runs_no_migration_code(node: Node) -> None:
    node.write("0001_loud.py", "raise SystemExit('status must not load migration files')\n")

    reply = node.engine().status(b"s1")

    assert reply["migrations"] == [{"version": 1, "name": "loud", "applied": False}]


# -- 9. exactly once ----------------------------------------------------------------------


def test_migrate_again_with_the_same_id_returns_the_stored_reply_and_runs_nothing(
    node: Node,
) -> None:
    marker = node.folder.parent / "marker.log"
    marker_migration(node, "0001_marked.py", marker, fail=False)
    engine = node.engine()
    first = engine.migrate(b"same")
    node.table_migration("0002_later.py", "later")

    again = engine.migrate(b"same")
    from_new_worker = node.engine().migrate(b"same")

    assert first == applied_reply(entry(1, "marked"))
    assert again == first
    assert codec.pack(again) == codec.pack(first)
    assert codec.pack(from_new_worker) == codec.pack(first)
    assert runs(marker) == 1
    assert node.db.versions() == [1]  # 2 waits for a request with a new id
    assert node.engine().migrate(b"new") == applied_reply(entry(2, "later"))


def test_rollback_twice_with_the_same_id_rolls_back_only_once(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"m1")

    first = engine.rollback(b"rb")
    second = engine.rollback(b"rb")

    assert first == {"type": "migration_rolled_back", "version": 2, "name": "two"}
    assert second == first
    assert codec.pack(second) == codec.pack(first)
    assert node.db.versions() == [1]
    assert node.db.tables() == {"one"}


def test_an_error_reply_is_stored_and_returned_again_without_rerunning(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    marker = node.folder.parent / "marker.log"
    marker_migration(node, "0001_marked.py", marker, fail=True)
    engine = node.engine()

    with pytest.raises(ReplyError) as raised:
        engine.migrate(b"same")
    first = raised.value.body()
    assert first["code"] == MIGRATION_FAILED
    assert first["failed"]["error"] == "RuntimeError: marked migration fails"
    assert runs(marker) == 1

    assert outcome(lambda: engine.migrate(b"same")) == first
    assert outcome(lambda: node.engine().migrate(b"same")) == first
    assert runs(marker) == 1

    # The marker does count runs: a new request id runs the migration again.
    assert outcome(lambda: engine.migrate(b"other"))["code"] == MIGRATION_FAILED
    assert runs(marker) == 2
    assert node.db.versions() == []
    assert "marked" not in node.db.tables()


def test_a_precondition_error_is_stored_for_its_request_id(node: Node) -> None:
    engine = node.engine()
    first = outcome(lambda: engine.rollback(b"rb"))
    assert first["code"] == PRECONDITION_FAILED
    node.table_migration("0001_one.py", "one")
    engine.migrate(b"m1")

    assert outcome(lambda: engine.rollback(b"rb")) == first
    assert node.db.versions() == [1]


def test_only_the_most_recent_replies_are_kept(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = node.db.store()
    monkeypatch.setattr(sys.modules[type(store).__module__], "KEEP_REPLIES", 3)
    for number in range(5):
        with store.transaction():
            store.store_reply(b"r%d" % number, {"type": "x", "n": number})
    with store.transaction():
        store.store_reply(b"r2", {"type": "x", "n": 22})  # replaced: now the newest

    assert [store.stored_reply(b"r%d" % n) for n in range(2, 5)] == [
        {"type": "x", "n": 22}, {"type": "x", "n": 3}, {"type": "x", "n": 4}]
    assert [row[1] for row in node.db.stored_replies()] == [b"r3", b"r4", b"r2"]
    # A pruned reply is not taken for one never given: its resend is told it is gone.
    for pruned in (b"r0", b"r1"):
        with pytest.raises(ReplyError) as raised:
            store.stored_reply(pruned)
        assert raised.value.code == CRASH
        assert "stored reply is gone" in raised.value.text
    assert store.stored_reply(b"r5") is None


# -- 10. resuming an interrupted request ----------------------------------------------------


def stop_after(count: int) -> Callable[[], bool]:
    """A should_stop that lets `count` migrations start, then asks to stop."""
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > count

    return should_stop


def test_a_resent_request_resumes_and_reports_every_migration_once(node: Node) -> None:
    for version, name in [(1, "one"), (2, "two"), (3, "three"), (4, "four")]:
        node.table_migration(f"{version:04d}_{name}.py", name)

    with pytest.raises(Interrupted):
        node.engine(should_stop=stop_after(2)).migrate(b"R")
    assert node.db.versions() == [1, 2]
    assert node.db.stored_replies() == []  # an interrupted request gets no reply yet

    reply = node.engine().migrate(b"R")

    assert reply == applied_reply(
        entry(1, "one"), entry(2, "two"), entry(3, "three"), entry(4, "four")
    )
    for item in reply["migrations"]:
        assert list(item) == ["version", "name", "status"]
    assert node.db.versions() == [1, 2, 3, 4]
    assert [row[6] for row in node.db.records()] == [b"R"] * 4
    assert node.engine().migrate(b"R") == reply


def test_a_resumed_request_does_not_claim_migrations_of_other_requests(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    node.engine().migrate(b"earlier")
    node.table_migration("0003_three.py", "three")
    node.table_migration("0004_four.py", "four")

    with pytest.raises(Interrupted):
        node.engine(should_stop=stop_after(1)).migrate(b"R")

    reply = node.engine().migrate(b"R")

    assert reply == applied_reply(entry(3, "three"), entry(4, "four"))


def test_a_write_a_dead_worker_began_then_cancelled_while_queued_reports_its_steps(
    node: Node,
) -> None:
    """A worker killed mid-request, its cancel queued with it in the next worker: the reply
    must list the step the dead worker took, not say that nothing ran."""
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    with pytest.raises(Interrupted):
        node.engine(should_stop=stop_after(1)).migrate(b"R")
    engine = node.engine()
    outbox = Outbox()
    writer = Writer(engine, outbox)
    writer.submit(Job(b"peer", b"R", engine.migrate, Params({})))
    assert writer.cancel([b"R"]) == [b"R"]  # queued, so it starts cancelled
    writer.start()
    try:
        ready, _, _ = select.select([outbox.wake_read], [], [], PROCESS_TIMEOUT_S)
        assert ready, "the writer answered"
        [(peer, frames)] = outbox.take()
    finally:
        writer.close()
        outbox.close()

    request_id, body = codec.unpack_reply(frames)
    assert (peer, request_id) == (b"peer", b"R")
    assert body["code"] == 14 and body["cancelled"] is True
    assert body["applied"] == [entry(1, "one")]
    assert body["text"].startswith("cancelled before migration 2 two started")
    assert node.db.versions() == [1]


# -- 11. what the tracking row holds -----------------------------------------------------


def test_the_tracking_row_holds_checksum_duration_time_and_request(node: Node) -> None:
    path = node.table_migration("0001_one.py", "one")
    before = datetime.now(UTC)

    node.engine().migrate(b"req-1")

    after = datetime.now(UTC)
    [row] = node.db.records()
    version, name, checksum, applied_at, execution_ms, applied_seq, request_id = row
    assert (version, name, applied_seq, request_id) == (1, "one", 1, b"req-1")
    assert checksum == checksum_of(path.read_bytes())
    assert isinstance(execution_ms, float)
    assert execution_ms >= 0
    assert re.fullmatch(TIMESTAMP, applied_at)
    stamp = datetime.fromisoformat(applied_at)
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0
    # The database's clock has millisecond precision: allow for its rounding.
    assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1)


# -- 12. effect and record share one transaction ------------------------------------------


def test_a_rolled_back_store_transaction_leaves_neither_effect_nor_record(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    store = node.db.store()

    with pytest.raises(RuntimeError, match="abandon"), store.transaction():
        with store.migration_db() as db:
            db.execute("CREATE TABLE half (x INTEGER)")
        store.record(1, "half", "0" * 64, 1.0, 1, b"r1")
        store.store_reply(b"r1", {"type": "migrations_applied"})
        assert node.db.in_transaction(store)
        raise RuntimeError("abandon")

    assert "half" not in node.db.tables()
    assert node.db.versions() == []
    assert node.db.stored_replies() == []
    assert store.applied() == []
    assert store.stored_reply(b"r1") is None


def test_an_up_whose_record_cannot_be_written_leaves_no_effect(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    # up() itself takes the version's tracking row, so record() fails after up() ran.
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_squatter.py",
        """
        def up(db):
            db.execute("CREATE TABLE squatter (x INTEGER)")
            db.execute(
                "INSERT INTO schema_migrations"
                " (version, name, checksum, applied_at, execution_ms, applied_seq)"
                " VALUES (2, 'fake', '', '', 0, 99)"
            )
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"]["error"].startswith(node.errors("duplicate key"))
    assert node.db.tables() == {"one"}
    assert node.db.versions() == [1]


# A trigger refusing to delete tracking rows, in each backend's dialect.
KEEP_RECORDS = {
    "sqlite": "CREATE TRIGGER keep BEFORE DELETE ON schema_migrations"
    " BEGIN SELECT RAISE(ABORT, 'records are kept'); END;",
    "postgresql": "CREATE FUNCTION keep() RETURNS trigger"
    " AS $$ BEGIN RAISE EXCEPTION 'records are kept'; END $$ LANGUAGE plpgsql;"
    " CREATE TRIGGER keep BEFORE DELETE ON schema_migrations"
    " FOR EACH ROW EXECUTE FUNCTION keep();",
}


def test_a_down_whose_record_cannot_be_deleted_leaves_everything(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    # down() forbids deleting tracking rows, so unrecord() fails after down() ran.
    node.write(
        "0001_guarded.py",
        f"""
        def up(db):
            db.execute("CREATE TABLE guarded (x INTEGER)")
            db.execute("INSERT INTO guarded VALUES (7)")

        def down(db):
            db.execute("DROP TABLE guarded")
            db.executescript({KEEP_RECORDS[node.db.name]!r})
        """,
    )
    engine = node.engine()
    engine.migrate(b"r1")
    records = node.db.records()

    body = outcome(lambda: engine.rollback(b"r2"))

    assert body["code"] == MIGRATION_FAILED
    assert "records are kept" in body["failed"]["error"]
    assert node.db.query("SELECT x FROM guarded") == [(7,)]
    assert "keep" not in node.db.objects()
    assert node.db.records() == records


# -- 13. a locked database ----------------------------------------------------------------


def test_a_locked_database_answers_temporarily_unavailable_and_runs_nothing(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.db.wait_briefly_for_locks(monkeypatch)
    marker = node.folder.parent / "marker.log"
    marker_migration(node, "0001_marked.py", marker, fail=False)
    engine = node.engine()

    other = node.db.lock_writes()
    with pytest.raises(ReplyError) as raised:
        engine.migrate(b"locked")
    other.close()

    assert raised.value.code == TEMPORARILY_UNAVAILABLE
    assert runs(marker) == 0
    assert node.db.versions() == []
    assert node.db.stored_replies() == []
    # The answer was not stored: once the lock is gone, the same request runs.
    assert engine.migrate(b"locked") == applied_reply(entry(1, "marked"))
    assert runs(marker) == 1


def test_a_locked_database_fails_rollback_with_temporarily_unavailable(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.db.wait_briefly_for_locks(monkeypatch)
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    engine.migrate(b"m1")

    other = node.db.lock_writes()
    body = outcome(lambda: engine.rollback(b"rb"))
    other.close()

    assert body["code"] == TEMPORARILY_UNAVAILABLE
    assert node.db.versions() == [1]
    assert node.db.tables() == {"one"}


class LockBefore(NoJournal):
    """A crash journal that lets another program take the write lock just before the
    migration named `victim` begins, as a concurrent writer would."""

    def __init__(self, db: Backend, victim: str) -> None:
        super().__init__()
        self.victim = victim
        self.other: Any = None
        self._db = db

    def running(self, request_id: bytes, what: str) -> None:
        if self.victim in what and self.other is None:
            self.other = self._db.lock_writes()


def test_a_lock_taken_between_two_migrations_answers_11_with_what_was_applied(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.db.wait_briefly_for_locks(monkeypatch)
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    journal = LockBefore(node.db, "migration 2 ")
    engine = Engine(node.db.store(), Catalog(node.folder), journal=journal)

    body = outcome(lambda: engine.migrate(b"busy"))
    journal.other.close()

    assert body["code"] == TEMPORARILY_UNAVAILABLE
    assert body["applied"] == [entry(1, "one")]
    assert list(body) == ["type", "code", "text", "applied"]
    assert node.db.versions() == [1]
    assert node.db.tables() == {"one"}


def test_a_database_that_refuses_writes_is_reported_as_such_not_as_locked(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    engine = Engine(node.db.read_only_store(), Catalog(node.folder))

    body = outcome(lambda: engine.migrate(b"ro"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"] == {"version": 1, "name": "one", "error": node.errors("read-only")}
    assert "locked" not in body["text"]
    assert node.db.versions() == []


@pytest.mark.parametrize(
    ("raising", "cause"),
    [
        ("import sys; sys.exit(78)", "SystemExit: 78"),
        ("raise SystemExit", "SystemExit"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ],
)
def test_a_migration_that_exits_fails_like_any_other_and_is_rolled_back(
    node: Node, raising: str, cause: str
) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_leaves.py",
        f"""
        def up(db):
            db.execute("CREATE TABLE leaves (x INTEGER)")
            {raising}
        """,
    )
    node.table_migration("0003_three.py", "three")
    engine = node.engine()

    body = outcome(lambda: engine.migrate(b"exit"))

    assert body["code"] == MIGRATION_FAILED
    assert body["applied"] == [entry(1, "one")]
    assert body["failed"] == {"version": 2, "name": "leaves", "error": cause}
    assert node.db.versions() == [1]
    assert node.db.tables() == {"one"}


def test_a_down_that_exits_leaves_the_migration_applied(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DROP_COMMITS)
    node.write(
        "0001_stays.py",
        """
        def up(db):
            db.execute("CREATE TABLE stays (x INTEGER)")

        def down(db):
            db.execute("DROP TABLE stays")
            raise SystemExit(3)
        """,
    )
    engine = node.engine()
    engine.migrate(b"m")

    body = outcome(lambda: engine.rollback(b"r"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"] == {"version": 1, "name": "stays", "error": "SystemExit: 3"}
    assert node.db.versions() == [1] and node.db.tables() == {"stays"}


# -- 14. dry runs and history ---------------------------------------------------------------


def test_a_dry_run_runs_everything_and_leaves_nothing_behind(node: Node) -> None:
    node.db.only("sqlite", "postgresql", why=DRY_DDL)
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()

    first = engine.migrate(b"d1", Params({"dry_run": True}))
    assert first == {**applied_reply(entry(1, "one"), entry(2, "two")), "dry_run": True,
                     **node.no_locks()}
    assert node.db.untouched()  # the tracking tables were created and rolled back

    engine.migrate(b"m1")
    node.table_migration("0003_three.py", "three")
    node.write("0004_broken.py", "def up(db):\n    db.execute('SELECT * FROM nowhere')\n")
    before = node.db.snapshot()

    failed = outcome(lambda: engine.migrate(b"d2", Params({"dry_run": True})))
    rolled_back = engine.rollback(b"d3", Params({"steps": 2, "dry_run": True}))

    assert failed["code"] == MIGRATION_FAILED and failed["dry_run"] is True
    assert failed["applied"] == [entry(3, "three")]
    assert failed["failed"]["error"].startswith(node.errors("missing table"))
    assert rolled_back["migrations"] == [
        entry(2, "two", "rolled_back"), entry(1, "one", "rolled_back")]
    assert rolled_back["dry_run"] is True
    assert node.db.snapshot() == before
    assert engine.store.stored_reply(b"d3") is None  # dry runs are not kept for resends


def test_history_lists_every_apply_rollback_and_baseline_with_src_and_times(
    node: Node,
) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    for handler, request_id in [("migrate", b"m1"), ("rollback", b"r1"), ("migrate", b"m2")]:
        getattr(engine, handler)(request_id, Params({}, "c1"))

    events = engine.history(b"h1")["events"]
    last_two = engine.history(b"h2", Params({"limit": 2}))["events"]

    assert [(e["version"], e["name"], e["action"]) for e in events] == [
        (1, "one", "apply"), (2, "two", "apply"), (2, "two", "rollback"), (2, "two", "apply")]
    assert all(e["src"] == "c1" for e in events)
    assert all(re.fullmatch(TIMESTAMP, e["started_at"]) for e in events)
    assert all(e["checksum"].startswith("norm-sha256:") and e["duration_ms"] >= 0
               for e in events)
    assert last_two == events[-2:]
    applied_at = node.db.query("SELECT applied_at FROM schema_migrations")
    assert len(applied_at) == 2 and all(re.fullmatch(TIMESTAMP, t) for (t,) in applied_at)


# -- 15. dbmate's sections --------------------------------------------------------------------


# A statement each database refuses to run inside a transaction, on a table named kept.
OUTSIDE_ONLY = {
    "sqlite": "VACUUM;",
    "postgresql": "CREATE INDEX CONCURRENTLY kept_id ON kept (id);",
}


def test_an_empty_down_section_reverts_as_a_no_op_and_a_missing_one_is_still_error_22(
    node: Node,
) -> None:
    node.write("0001_oneway.sql", "-- migrate:up\nCREATE TABLE oneway (id INTEGER);\n")
    node.write("0002_empty.sql",
               "-- migrate:up\nCREATE TABLE empty (id INTEGER);\n-- migrate:down\n")
    node.write(
        "0003_comments.sql",
        "-- migrate:up\nCREATE TABLE comments (id INTEGER);\n\n"
        "-- migrate:down\n-- keep the table; nothing to undo\n/* nor; here */\n",
    )
    node.write("0004_blank.sql", "-- migrate:up\nCREATE TABLE blank (id INTEGER);\n"
                                 "-- migrate:down\n  \n\t;\n\n")
    engine = node.engine()
    engine.migrate(b"m1")
    before = node.db.snapshot()
    reverted = [entry(4, "blank", "rolled_back"), entry(3, "comments", "rolled_back"),
                entry(2, "empty", "rolled_back")]

    dry = engine.rollback(b"d1", Params({"to": 1, "dry_run": True}))
    assert dry == {"type": "migrations_rolled_back", "count": 3, "migrations": reverted,
                   "dry_run": True, **node.no_locks()}
    assert node.db.snapshot() == before

    assert engine.validate(b"v1") == {"type": "validation", "ok": True, "problems": []}
    assert engine.rollback(b"r1", Params({"to": 1}, "c1")) == {
        "type": "migrations_rolled_back", "count": 3, "migrations": reverted}
    assert node.db.versions() == [1]
    assert node.db.tables() == {"oneway", "empty", "comments", "blank"}  # nothing undone
    events = engine.history(b"h1")["events"]
    assert [(e["version"], e["action"], e["src"]) for e in events[-3:]] == [
        (4, "rollback", "c1"), (3, "rollback", "c1"), (2, "rollback", "c1")]

    refused = outcome(lambda: engine.rollback(b"r2"))
    assert refused == {
        "type": "error", "code": PRECONDITION_FAILED,
        "text": "migration 1 oneway has no -- migrate:down section, so it cannot be rolled back",
    }
    assert node.db.versions() == [1]


def test_the_down_of_a_transaction_false_up_runs_in_a_transaction_of_its_own(
    node: Node,
) -> None:
    node.db.only("sqlite", "postgresql", why=DROP_COMMITS)
    node.write(
        "0001_kept.sql",
        "-- migrate:up transaction:false\n"
        "CREATE TABLE kept (id INTEGER);\n"
        f"{OUTSIDE_ONLY[node.db.name]}\n"
        "-- migrate:down\n"
        "DROP TABLE kept;\n"
        "INSERT INTO nowhere VALUES (1);\n",
    )
    engine = node.engine()
    with engine.store.transaction():
        pass  # on PostgreSQL the first write makes the test's schema, which the up runs in
    assert engine.migrate(b"m1") == applied_reply(entry(1, "kept"))

    failed = outcome(lambda: engine.rollback(b"r1"))

    assert failed["code"] == MIGRATION_FAILED
    assert failed["text"].startswith(
        "rollback of migration 1 kept failed, so it stays applied and unchanged: "
        + node.errors("missing table"))
    assert node.db.tables() == {"kept"}  # its DROP TABLE was rolled back with the failure
    assert node.db.versions() == [1]


def test_transaction_false_on_the_down_marker_alone_leaves_the_up_in_a_transaction(
    node: Node,
) -> None:
    node.db.only("sqlite", "postgresql", why=DDL_COMMITS)
    down = "-- migrate:down transaction:false\nDROP TABLE kept;\nINSERT INTO nowhere VALUES (1);\n"
    node.write("0001_kept.sql", "-- migrate:up\nCREATE TABLE kept (id INTEGER);\n"
                                "INSERT INTO nowhere VALUES (1);\n" + down)
    engine = node.engine()

    failed_up = outcome(lambda: engine.migrate(b"m1"))
    assert failed_up["text"].startswith(
        "migration 1 kept failed and was rolled back, so it is not applied: ")
    assert node.db.tables() == set()  # its CREATE TABLE was rolled back with the failure

    node.write("0001_kept.sql", "-- migrate:up\nCREATE TABLE kept (id INTEGER);\n" + down)
    engine.migrate(b"m2")
    before = node.db.snapshot()
    dry = outcome(lambda: engine.rollback(b"d1", Params({"dry_run": True})))
    assert dry["code"] == MIGRATION_FAILED and dry["dry_run"] is True
    assert node.db.snapshot() == before  # it ran inside the dry run's transaction

    failed_down = outcome(lambda: engine.rollback(b"r1"))
    assert failed_down["code"] == MIGRATION_FAILED
    assert failed_down["text"].startswith(
        "rollback of migration 1 kept failed outside a transaction (it says"
        " transaction:false), so it stays applied, and statements before the failing one"
        " stay: " + node.errors("missing table"))
    assert node.db.tables() == set()  # its DROP TABLE stays
    assert node.db.versions() == [1]
