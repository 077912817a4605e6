"""Tests for worker.engine: migrate, rollback and status against a real SQLite file.

Every test gets its own folder of small migration files and its own database file, and
looks into that file through a separate sqlite3 connection, as another program would.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import worker.sqlite_store
from broker.errors import (
    MIGRATION_FAILED,
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
    ReplyError,
)
from worker.catalog import Catalog, DuplicateVersion, checksum_of
from worker.engine import Engine, Interrupted
from worker.journal import NoJournal
from worker.params import Params
from worker.sqlite_store import SqliteStore

Reply = dict[str, Any]


# -- helpers -----------------------------------------------------------------------------


class Node:
    """A migrations folder and a database file, with engines on them closed at teardown."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "migrations"
        self.folder.mkdir()
        self.db = root / "db.sqlite"
        self.stores: list[SqliteStore] = []

    def engine(self, should_stop: Callable[[], bool] = lambda: False) -> Engine:
        """A fresh store and catalog on this node's files, like a newly started worker."""
        store = SqliteStore(self.db)
        self.stores.append(store)
        return Engine(store, Catalog(self.folder), should_stop=should_stop)

    def write(self, filename: str, source: str) -> Path:
        path = self.folder / filename
        path.write_text(textwrap.dedent(source))
        return path

    def table_migration(self, filename: str, table: str, *, down: bool = True) -> Path:
        """A migration creating `table` (one row in it) and, if asked, a down() dropping it."""
        source = f"""
            def up(db):
                db.execute("CREATE TABLE {table} (id INTEGER PRIMARY KEY, note TEXT)")
                db.execute("INSERT INTO {table} (note) VALUES (?)", ("{filename}",))
            """
        if down:
            source += f"""
            def down(db):
                db.execute("DROP TABLE {table}")
            """
        return self.write(filename, source)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    # What another program reading the database file sees.

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with closing(sqlite3.connect(self.db)) as connection:
            return connection.execute(sql, params).fetchall()

    def objects(self) -> set[str]:
        """Names of every table, index and trigger in the file."""
        return {name for (name,) in self.query("SELECT name FROM sqlite_master")}

    def tables(self) -> set[str]:
        """User tables: everything but the tracking tables and SQLite's own."""
        rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {
            name
            for (name,) in rows
            if not name.startswith("sqlite_") and not name.startswith("schema_migration")
        }

    def records(self) -> list[tuple]:
        """Every tracking row, in version order (empty if there is no tracking table)."""
        if "schema_migrations" not in self.objects():
            return []
        return self.query(
            "SELECT version, name, checksum, applied_at, execution_ms, applied_seq, request_id"
            " FROM schema_migrations ORDER BY version"
        )

    def versions(self) -> list[int]:
        return [row[0] for row in self.records()]

    def stored_replies(self) -> list[tuple]:
        if "schema_migration_replies" not in self.objects():
            return []
        return self.query("SELECT seq, request_id, reply FROM schema_migration_replies")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    space = Node(tmp_path)
    try:
        yield space
    finally:
        space.close()


def entry(version: int, name: str) -> dict[str, object]:
    return {"version": version, "name": name, "status": "applied"}


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
        "    db.execute('CREATE TABLE marked (x)')\n"
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
            db.execute("INSERT INTO users (email, role) VALUES ('a@example.org', 'admin')")
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
    assert node.query("SELECT email, role FROM users") == [("a@example.org", "admin")]
    # applied_seq records the order of application.
    assert [(row[0], row[5]) for row in node.records()] == [(1, 1), (2, 2), (3, 3)]


# -- 2. pending detection -----------------------------------------------------------------


def test_a_new_file_is_the_only_migration_the_next_request_applies(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    assert engine.migrate(b"first") == applied_reply(entry(1, "one"), entry(2, "two"))
    before = node.records()

    node.table_migration("0003_three.py", "three")
    reply = engine.migrate(b"second")

    assert reply == applied_reply(entry(3, "three"))
    assert node.records()[:2] == before
    assert node.versions() == [1, 2, 3]
    assert node.tables() == {"one", "two", "three"}
    assert node.query("SELECT COUNT(*) FROM one") == [(1,)]  # 1 did not run again


def test_migrate_with_nothing_pending_answers_zero_and_writes_nothing(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"first")
    records, replies = node.records(), node.stored_replies()
    file_bytes = node.db.read_bytes()

    reply = engine.migrate(b"second")

    assert reply == {"type": "migrations_applied", "count": 0, "migrations": []}
    assert list(reply) == ["type", "count", "migrations"]
    assert node.records() == records
    assert node.stored_replies() == replies
    assert node.db.read_bytes() == file_bytes


# -- 3. a failing up() --------------------------------------------------------------------


def test_a_failing_up_leaves_nothing_and_stops_the_request(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_broken.py",
        """
        def up(db):
            db.execute("CREATE TABLE broken (x)")
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
    assert list(body) == ["type", "code", "text", "applied", "failed"]
    assert body["type"] == "error"
    assert body["code"] == 14
    assert "ValueError: boom in up" in body["text"]
    # 2 left nothing behind, and 3 was never attempted.
    assert node.tables() == {"one"}
    assert node.versions() == [1]


def test_a_failing_first_migration_reports_an_empty_applied_list(node: Node) -> None:
    node.write(
        "0001_broken.py",
        """
        def up(db):
            db.execute("CREATE TABLE broken (x)")
            raise KeyError("missing")
        """,
    )
    node.table_migration("0002_two.py", "two")

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["applied"] == []
    assert body["failed"] == {"version": 1, "name": "broken", "error": "KeyError: 'missing'"}
    assert node.tables() == set()
    assert node.versions() == []


def test_a_file_without_up_fails_the_request_without_recording_it(node: Node) -> None:
    node.write("0001_empty.py", "VALUE = 1\n")

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"]["version"] == 1
    assert node.versions() == []


# -- 4. a failing down() ------------------------------------------------------------------


def test_a_failing_down_leaves_table_rows_and_record_as_they_were(node: Node) -> None:
    node.write(
        "0001_items.py",
        """
        def up(db):
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT)")
            db.executemany("INSERT INTO items (label) VALUES (?)", [("a",), ("b",), ("c",)])

        def down(db):
            db.execute("DELETE FROM items")
            db.execute("DROP TABLE items")
            raise OSError("down cannot finish")
        """,
    )
    engine = node.engine()
    engine.migrate(b"r1")
    records = node.records()
    rows = node.query("SELECT id, label FROM items ORDER BY id")

    with pytest.raises(ReplyError) as raised:
        engine.rollback(b"r2")

    assert raised.value.code == MIGRATION_FAILED
    assert raised.value.extra["failed"] == {
        "version": 1,
        "name": "items",
        "error": "OSError: down cannot finish",
    }
    assert node.tables() == {"items"}
    assert node.query("SELECT id, label FROM items ORDER BY id") == rows
    assert node.records() == records


# -- 5. rollback ---------------------------------------------------------------------------


def test_rollback_reverts_the_latest_migration_and_deletes_its_record(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    engine = node.engine()
    engine.migrate(b"r1")

    reply = engine.rollback(b"r2")

    assert reply == {"type": "migration_rolled_back", "version": 2, "name": "two"}
    assert list(reply) == ["type", "version", "name"]
    assert node.tables() == {"one"}
    assert node.versions() == [1]


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
    assert node.tables() == {"one", "three"}
    assert node.versions() == [1, 3]

    second = engine.rollback(b"r4")
    assert second == {"type": "migration_rolled_back", "version": 3, "name": "three"}
    assert node.versions() == [1]

    third = engine.rollback(b"r5")
    assert third == {"type": "migration_rolled_back", "version": 1, "name": "one"}
    assert node.versions() == []
    assert node.tables() == set()


def test_rollback_with_nothing_applied_is_a_precondition_failure(node: Node) -> None:
    node.table_migration("0001_one.py", "one")

    with pytest.raises(ReplyError) as raised:
        node.engine().rollback(b"r1")

    assert raised.value.code == PRECONDITION_FAILED
    assert node.versions() == []
    assert node.tables() == set()


def test_rollback_of_a_migration_without_down_changes_nothing(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_forever.py", "forever", down=False)
    engine = node.engine()
    engine.migrate(b"r1")
    records = node.records()

    with pytest.raises(ReplyError) as raised:
        engine.rollback(b"r2")

    assert raised.value.code == PRECONDITION_FAILED
    assert "down()" in raised.value.text
    assert node.records() == records
    assert node.tables() == {"one", "forever"}
    assert node.query("SELECT COUNT(*) FROM forever") == [(1,)]


# -- 6. duplicate versions ------------------------------------------------------------------


def test_two_files_with_one_version_raise_duplicate_version_naming_both(node: Node) -> None:
    node.table_migration("0001_a.py", "a")
    node.table_migration("1_b.py", "b")

    with pytest.raises(DuplicateVersion) as raised:
        Catalog(node.folder).migrations()

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
    assert node.tables() == set()
    assert node.versions() == []


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
            db.execute("CREATE TABLE sneaky (x)")
            db.execute("INSERT INTO sneaky VALUES (1)")
            db.execute({statement!r})
            db.execute("CREATE TABLE after_{statement.lower()} (x)")
        """,
    )

    with pytest.raises(ReplyError) as raised:
        node.engine().migrate(b"r1")

    assert raised.value.code == MIGRATION_FAILED
    assert raised.value.extra["applied"] == [entry(1, "one")]
    assert raised.value.extra["failed"]["version"] == 2
    assert node.tables() == {"one"}
    assert node.versions() == [1]


def test_executescript_cannot_commit_either(node: Node) -> None:
    node.write(
        "0001_script.py",
        """
        def up(db):
            db.executescript("CREATE TABLE a (x); INSERT INTO a VALUES (1); COMMIT;")
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert node.tables() == set()
    assert node.versions() == []


def test_a_migration_that_ends_the_transaction_anyway_is_reported_failed(node: Node) -> None:
    # Bypassing the guard through the private connection: the engine must notice.
    node.write(
        "0001_bypass.py",
        """
        def up(db):
            db._connection.set_authorizer(None)
            db.execute("CREATE TABLE bypass (x)")
            db.execute("COMMIT")
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert "ended the transaction" in body["failed"]["error"]
    assert node.versions() == []


def test_executescript_inside_up_is_atomic(node: Node) -> None:
    node.write(
        "0001_script.py",
        """
        def up(db):
            db.executescript(
                '''
                CREATE TABLE first (x);
                CREATE TABLE second (y);
                INSERT INTO no_such_table VALUES (1);
                CREATE TABLE fourth (z);
                '''
            )
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"]["error"].startswith("OperationalError: ")
    assert "no_such_table" in body["failed"]["error"]
    assert node.tables() == set()
    assert node.versions() == []


def test_executescript_handles_triggers_strings_and_a_trailing_comment(node: Node) -> None:
    node.write(
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

    reply = node.engine().migrate(b"r1")

    assert reply == applied_reply(entry(1, "trigger"))
    assert "orders_audit" in node.objects()
    assert node.query("SELECT what FROM audit ORDER BY rowid") == [
        ("insert; into orders",),
        ("total=42",),
    ]
    assert node.query("SELECT total FROM orders") == [(42,)]


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

    assert node.query("SELECT n FROM dst") == [(5,)]


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


def test_status_on_a_new_database_writes_nothing(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")

    reply = node.engine().status(b"s1")

    assert reply == {
        "type": "migration_status",
        "migrations": [
            {"version": 1, "name": "one", "applied": False},
            {"version": 2, "name": "two", "applied": False},
        ],
    }
    assert node.objects() == set()


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
    assert list(again) == list(first)
    assert from_new_worker == first
    assert runs(marker) == 1
    assert node.versions() == [1]  # 2 waits for a request with a new id
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
    assert list(second) == list(first)
    assert node.versions() == [1]
    assert node.tables() == {"one"}


def test_an_error_reply_is_stored_and_returned_again_without_rerunning(node: Node) -> None:
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
    assert node.versions() == []
    assert "marked" not in node.tables()


def test_a_precondition_error_is_stored_for_its_request_id(node: Node) -> None:
    engine = node.engine()
    first = outcome(lambda: engine.rollback(b"rb"))
    assert first["code"] == PRECONDITION_FAILED
    node.table_migration("0001_one.py", "one")
    engine.migrate(b"m1")

    assert outcome(lambda: engine.rollback(b"rb")) == first
    assert node.versions() == [1]


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
    assert node.versions() == [1, 2]
    assert node.stored_replies() == []  # an interrupted request gets no reply yet

    reply = node.engine().migrate(b"R")

    assert reply == applied_reply(
        entry(1, "one"), entry(2, "two"), entry(3, "three"), entry(4, "four")
    )
    for item in reply["migrations"]:
        assert list(item) == ["version", "name", "status"]
    assert node.versions() == [1, 2, 3, 4]
    assert [row[6] for row in node.records()] == [b"R"] * 4
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


# -- 11. what the tracking row holds -----------------------------------------------------


def test_the_tracking_row_holds_checksum_duration_time_and_request(node: Node) -> None:
    path = node.table_migration("0001_one.py", "one")
    before = datetime.now(UTC)

    node.engine().migrate(b"req-1")

    after = datetime.now(UTC)
    [(version, name, checksum, applied_at, execution_ms, applied_seq, request_id)] = node.records()
    assert (version, name, applied_seq, request_id) == (1, "one", 1, b"req-1")
    assert checksum == checksum_of(path.read_bytes())
    assert isinstance(execution_ms, float)
    assert execution_ms >= 0
    assert applied_at.endswith("Z")
    stamp = datetime.fromisoformat(applied_at)
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0
    # SQLite's clock has millisecond precision: allow for its rounding.
    assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1)


# -- 12. effect and record share one transaction ------------------------------------------


def test_a_rolled_back_store_transaction_leaves_neither_effect_nor_record(node: Node) -> None:
    engine = node.engine()
    store = engine.store

    connection = store.connection
    with pytest.raises(RuntimeError, match="abandon"), store.transaction():
        connection.execute("CREATE TABLE half (x)")
        store.record(1, "half", "0" * 64, 1.0, 1, b"r1")
        store.store_reply(b"r1", {"type": "migrations_applied"})
        assert connection.in_transaction
        raise RuntimeError("abandon")

    assert "half" not in node.tables()
    assert node.versions() == []
    assert node.stored_replies() == []
    assert store.applied() == []
    assert store.stored_reply(b"r1") is None


def test_an_up_whose_record_cannot_be_written_leaves_no_effect(node: Node) -> None:
    # up() itself takes the version's tracking row, so record() fails after up() ran.
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_squatter.py",
        """
        def up(db):
            db.execute("CREATE TABLE squatter (x)")
            db.execute(
                "INSERT INTO schema_migrations"
                " (version, name, checksum, applied_at, execution_ms, applied_seq)"
                " VALUES (2, 'fake', '', '', 0, 99)"
            )
        """,
    )

    body = outcome(lambda: node.engine().migrate(b"r1"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"]["error"].startswith("IntegrityError")
    assert node.tables() == {"one"}
    assert node.versions() == [1]


def test_a_down_whose_record_cannot_be_deleted_leaves_everything(node: Node) -> None:
    # down() forbids deleting tracking rows, so unrecord() fails after down() ran.
    node.write(
        "0001_guarded.py",
        """
        def up(db):
            db.execute("CREATE TABLE guarded (x)")
            db.execute("INSERT INTO guarded VALUES (7)")

        def down(db):
            db.execute("DROP TABLE guarded")
            db.executescript('''
                CREATE TRIGGER keep BEFORE DELETE ON schema_migrations
                BEGIN SELECT RAISE(ABORT, 'records are kept'); END;
            ''')
        """,
    )
    engine = node.engine()
    engine.migrate(b"r1")
    records = node.records()

    body = outcome(lambda: engine.rollback(b"r2"))

    assert body["code"] == MIGRATION_FAILED
    assert "records are kept" in body["failed"]["error"]
    assert node.query("SELECT x FROM guarded") == [(7,)]
    assert "keep" not in node.objects()
    assert node.records() == records


# -- 13. a locked database ----------------------------------------------------------------


def test_a_locked_database_answers_temporarily_unavailable_and_runs_nothing(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.sqlite_store, "BUSY_TIMEOUT_S", 0.1)
    marker = node.folder.parent / "marker.log"
    marker_migration(node, "0001_marked.py", marker, fail=False)
    engine = node.engine()

    with closing(sqlite3.connect(node.db, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(ReplyError) as raised:
            engine.migrate(b"locked")
        other.execute("ROLLBACK")

    assert raised.value.code == TEMPORARILY_UNAVAILABLE
    assert runs(marker) == 0
    assert node.versions() == []
    assert node.stored_replies() == []
    # The answer was not stored: once the lock is gone, the same request runs.
    assert engine.migrate(b"locked") == applied_reply(entry(1, "marked"))
    assert runs(marker) == 1


def test_a_locked_database_fails_rollback_with_temporarily_unavailable(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.sqlite_store, "BUSY_TIMEOUT_S", 0.1)
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    engine.migrate(b"m1")

    with closing(sqlite3.connect(node.db, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        body = outcome(lambda: engine.rollback(b"rb"))
        other.execute("ROLLBACK")

    assert body["code"] == TEMPORARILY_UNAVAILABLE
    assert node.versions() == [1]
    assert node.tables() == {"one"}


class LockBefore(NoJournal):
    """A crash journal that lets another program take the write lock just before the
    migration named `victim` begins, as a concurrent writer would."""

    def __init__(self, db: Path, victim: str) -> None:
        super().__init__()
        self.victim = victim
        self.other: sqlite3.Connection | None = None
        self._db = db

    def running(self, request_id: bytes, what: str) -> None:
        if self.victim in what and self.other is None:
            self.other = sqlite3.connect(self._db, isolation_level=None)
            self.other.execute("BEGIN IMMEDIATE")


def test_a_lock_taken_between_two_migrations_answers_11_with_what_was_applied(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.sqlite_store, "BUSY_TIMEOUT_S", 0.1)
    node.table_migration("0001_one.py", "one")
    node.table_migration("0002_two.py", "two")
    journal = LockBefore(node.db, "migration 2 ")
    engine = Engine(SqliteStore(node.db), Catalog(node.folder), journal=journal)

    body = outcome(lambda: engine.migrate(b"busy"))
    journal.other.close()

    assert body["code"] == TEMPORARILY_UNAVAILABLE
    assert body["applied"] == [entry(1, "one")]
    assert list(body) == ["type", "code", "text", "applied"]
    assert node.versions() == [1]
    engine.store.close()


def test_a_database_that_refuses_writes_is_reported_as_such_not_as_locked(node: Node) -> None:
    node.table_migration("0001_one.py", "one")
    engine = node.engine()
    engine.store.connection.execute("PRAGMA query_only = ON")  # BEGIN IMMEDIATE: READONLY

    body = outcome(lambda: engine.migrate(b"ro"))

    assert body["code"] == MIGRATION_FAILED
    assert body["failed"] == {"version": 1, "name": "one",
                              "error": "OperationalError: attempt to write a readonly database"}
    assert "locked" not in body["text"]
    assert node.versions() == []


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
    node.table_migration("0001_one.py", "one")
    node.write(
        "0002_leaves.py",
        f"""
        def up(db):
            db.execute("CREATE TABLE leaves (x)")
            {raising}
        """,
    )
    node.table_migration("0003_three.py", "three")
    engine = node.engine()

    body = outcome(lambda: engine.migrate(b"exit"))

    assert body["code"] == MIGRATION_FAILED
    assert body["applied"] == [entry(1, "one")]
    assert body["failed"] == {"version": 2, "name": "leaves", "error": cause}
    assert node.versions() == [1]
    assert node.tables() == {"one"}


def test_a_down_that_exits_leaves_the_migration_applied(node: Node) -> None:
    node.write(
        "0001_stays.py",
        """
        def up(db):
            db.execute("CREATE TABLE stays (x)")

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
    assert node.versions() == [1] and node.tables() == {"stays"}
