"""A dry run on PostgreSQL lists the locks its migrations took (issue 21, item 4).

Each test gets a schema of its own in the module's database on the machine's server (see
tests/backends.py), with existing tables made there through another session, then runs
the engine's dry run, or the command `migrate --dry-run` as a real process, and compares
what it reports with what the server says of the same relations. SQLite's dry runs are
checked to be as they were: no `locks` at all.
"""

from __future__ import annotations

import io
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.cli.lock_table import lock_table, size_text
from broker.cli.terminal import Style
from broker.errors import MIGRATION_FAILED, ReplyError
from tests.backends import SHORT_LOCK_WAIT_MS, PostgresBackend, SqliteBackend
from tests.support import PROCESS_TIMEOUT_S
from worker.catalog import Catalog
from worker.engine import Engine
from worker.params import Params
from worker.stores.postgres.locks import HELD, LOCK_MODES, SNAPSHOT, strongest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install .[test])")

DRY_RUN = Params({"dry_run": True})


@pytest.fixture
def pg(pg_database: str) -> Iterator[PostgresBackend]:
    """A schema of its own on the server, made now (the migrations' search_path is it)."""
    db = PostgresBackend(pg_database)
    try:
        db.query(f"CREATE SCHEMA {db.schema}")
        yield db
    finally:
        db.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    return path


def write(folder: Path, filename: str, source: str) -> None:
    (folder / filename).write_text(textwrap.dedent(source).lstrip())


def sql_migration(folder: Path, filename: str, *statements: str) -> None:
    """A .sql migration whose up runs `statements`, each on a line; its down does nothing."""
    write(folder, filename, "-- migrate:up\n" + "".join(f"{s};\n" for s in statements)
          + "-- migrate:down\n")


def engine_on(db: Any, folder: Path) -> Engine:
    """The engine a newly started worker has on this database and folder."""
    store = db.store()
    return Engine(store, Catalog(folder, split_statements=store.split_statements))


def accounts(db: PostgresBackend, rows: int = 2000) -> None:
    """An existing table with rows, a primary key and an index on x."""
    db.query("CREATE TABLE accounts (id serial PRIMARY KEY, x integer, email text)")
    db.query("CREATE INDEX accounts_x ON accounts (x)")
    db.query("INSERT INTO accounts (x, email) SELECT g, 'user' || g || '@example.org'"
             " FROM generate_series(1, %s) AS g", (rows,))


def size(db: PostgresBackend, relation: str) -> int:
    ((bytes_,),) = db.query("SELECT pg_relation_size(%s::regclass)", (f"{db.schema}.{relation}",))
    return bytes_


def filenode(db: PostgresBackend, relation: str) -> int:
    ((node,),) = db.query("SELECT relfilenode FROM pg_class WHERE oid = %s::regclass",
                          (f"{db.schema}.{relation}",))
    return node


def lock(db: PostgresBackend, version: int, relation: str, mode: str, rewritten: bool,
         bytes_: int | None) -> dict[str, Any]:
    return {"version": version, "relation": f"{db.schema}.{relation}", "mode": mode,
            "rewritten": rewritten, "bytes": bytes_}


def outcome(action: Any) -> dict[str, Any]:
    """The reply body of a handler call, an error's too."""
    try:
        return action()
    except ReplyError as error:
        return error.body()


# -- what the engine reports -----------------------------------------------------------------


def test_changing_a_column_type_is_access_exclusive_and_rewrites_the_table_and_indexes(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    before = {name: size(pg, name) for name in ("accounts", "accounts_pkey", "accounts_x")}
    sql_migration(folder, "0003_widen.sql", "ALTER TABLE accounts ALTER COLUMN x TYPE bigint")

    reply = engine_on(pg, folder).migrate(b"d1", DRY_RUN)

    assert reply["migrations"] == [{"version": 3, "name": "widen", "status": "applied"}]
    assert reply["locks"] == [
        lock(pg, 3, "accounts", "AccessExclusiveLock", True, before["accounts"]),
        lock(pg, 3, "accounts_pkey", "AccessExclusiveLock", True, before["accounts_pkey"]),
        # PostgreSQL drops the index on the column and makes it again under its name.
        lock(pg, 3, "accounts_x", "AccessExclusiveLock", True, before["accounts_x"]),
    ]
    assert before["accounts"] > 8192  # rows enough for a size that is not one empty page


def test_creating_an_index_is_share_and_what_the_migration_created_is_not_listed(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    bytes_ = size(pg, "accounts")
    sql_migration(folder, "0001_index.sql",
                  "CREATE INDEX accounts_email ON accounts (email)",
                  "CREATE TABLE fresh (id integer, note text)",
                  "CREATE INDEX fresh_id ON fresh (id)",
                  "INSERT INTO fresh SELECT g, 'a note' FROM generate_series(1, 100) AS g",
                  "ALTER TABLE fresh ALTER COLUMN id TYPE bigint")

    reply = engine_on(pg, folder).migrate(b"d1", DRY_RUN)

    assert reply["locks"] == [lock(pg, 1, "accounts", "ShareLock", False, bytes_)]


def test_adding_a_nullable_column_is_access_exclusive_without_a_rewrite(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    node = filenode(pg, "accounts")
    sql_migration(folder, "0001_column.sql", "ALTER TABLE accounts ADD COLUMN c integer")

    reply = engine_on(pg, folder).migrate(b"d1", DRY_RUN)

    assert reply["locks"] == [
        lock(pg, 1, "accounts", "AccessExclusiveLock", False, size(pg, "accounts"))]
    assert filenode(pg, "accounts") == node  # and the real table was never touched


def test_each_migration_gets_the_relations_it_locked_python_statements_included(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    pg.query("CREATE TABLE ledger (n integer)")
    pg.query("INSERT INTO ledger VALUES (1), (2)")
    sql_migration(folder, "0001_index.sql", "CREATE INDEX accounts_email ON accounts (email)")
    write(folder, "0002_ledger.py", """
        def up(db):
            db.executemany("INSERT INTO ledger VALUES (?)", [(3,), (4,)])
            assert db.query("SELECT count(*) FROM ledger") == [(4,)]
        """)
    # Stronger than migration 1's SHARE on accounts: an entry of its own.
    sql_migration(folder, "0003_column.sql", "ALTER TABLE accounts ADD COLUMN c integer")
    # On accounts, weaker than what migration 3 holds until the dry run ends: not told
    # apart from it; its indexes, which the planner opens, were not locked before.
    write(folder, "0004_read.py", """
        def up(db):
            db.execute("SELECT count(*) FROM accounts")
        """)
    sizes = {name: size(pg, name) for name in ("accounts", "accounts_pkey", "accounts_x",
                                               "ledger")}

    reply = engine_on(pg, folder).migrate(b"d1", DRY_RUN)

    assert [m["version"] for m in reply["migrations"]] == [1, 2, 3, 4]
    assert reply["locks"] == [
        lock(pg, 1, "accounts", "ShareLock", False, sizes["accounts"]),
        lock(pg, 2, "ledger", "RowExclusiveLock", False, sizes["ledger"]),
        lock(pg, 3, "accounts", "AccessExclusiveLock", False, sizes["accounts"]),
        lock(pg, 4, "accounts_pkey", "AccessShareLock", False, sizes["accounts_pkey"]),
        lock(pg, 4, "accounts_x", "AccessShareLock", False, sizes["accounts_x"]),
    ]


def test_a_dry_run_leaves_the_tables_and_tracking_rows_as_they_were(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg, rows=50)
    sql_migration(folder, "0001_table.sql", "CREATE TABLE kept (id integer)")
    engine = engine_on(pg, folder)
    engine.migrate(b"m1")
    sql_migration(folder, "0002_widen.sql", "ALTER TABLE accounts ALTER COLUMN x TYPE bigint",
                  "UPDATE accounts SET email = 'gone'", "DROP TABLE kept")
    before = pg.snapshot(), pg.query("SELECT * FROM accounts ORDER BY id")
    nodes = {name: filenode(pg, name) for name in ("accounts", "accounts_pkey", "accounts_x")}

    reply = engine.migrate(b"d1", DRY_RUN)

    assert {entry["relation"] for entry in reply["locks"]} == {
        f"{pg.schema}.{name}" for name in ("accounts", "accounts_pkey", "accounts_x", "kept")}
    assert (pg.snapshot(), pg.query("SELECT * FROM accounts ORDER BY id")) == before
    assert {name: filenode(pg, name) for name in nodes} == nodes
    assert pg.query("SELECT data_type FROM information_schema.columns WHERE table_schema = %s"
                    " AND table_name = 'accounts' AND column_name = 'x'",
                    (pg.schema,)) == [("integer",)]
    assert pg.versions() == [1]


def test_a_relation_another_session_holds_is_not_waited_for_when_the_dry_run_leaves_it(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    pg.query("CREATE TABLE busy (id integer)")
    other = pg.keep(psycopg.connect(pg.url))  # not autocommit: its lock lasts until closed
    other.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
    pg.settings.append(f"lock_timeout={SHORT_LOCK_WAIT_MS}")  # a wait would fail at once
    sql_migration(folder, "0001_column.sql", "ALTER TABLE accounts ADD COLUMN c integer")

    reply = engine_on(pg, folder).migrate(b"d1", DRY_RUN)

    assert reply["locks"] == [
        lock(pg, 1, "accounts", "AccessExclusiveLock", False, size(pg, "accounts"))]


def test_a_failing_dry_run_lists_the_locks_taken_before_it_failed(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    sql_migration(folder, "0001_column.sql", "ALTER TABLE accounts ADD COLUMN c integer")
    sql_migration(folder, "0002_broken.sql", "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE",
                  "SELECT * FROM nowhere")

    body = outcome(lambda: engine_on(pg, folder).migrate(b"d1", DRY_RUN))

    assert body["code"] == MIGRATION_FAILED and body["dry_run"] is True
    assert body["failed"]["version"] == 2
    assert body["locks"] == [
        lock(pg, 1, "accounts", "AccessExclusiveLock", False, size(pg, "accounts"))]


def test_a_rollback_dry_run_lists_the_locks_of_each_down(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    write(folder, "0001_kept.sql", """
        -- migrate:up
        CREATE TABLE kept (id integer);
        -- migrate:down
        DROP TABLE kept;
        """)
    write(folder, "0002_column.sql", """
        -- migrate:up
        ALTER TABLE accounts ADD COLUMN c integer;
        -- migrate:down
        ALTER TABLE accounts DROP COLUMN c;
        """)
    engine = engine_on(pg, folder)
    engine.migrate(b"m1")
    sizes = {name: size(pg, name) for name in ("accounts", "kept")}

    reply = engine.rollback(b"d1", Params({"to": 0, "dry_run": True}))

    assert [m["version"] for m in reply["migrations"]] == [2, 1]
    assert reply["locks"] == [
        lock(pg, 2, "accounts", "AccessExclusiveLock", False, sizes["accounts"]),
        lock(pg, 1, "kept", "AccessExclusiveLock", False, sizes["kept"]),
    ]
    assert pg.versions() == [1, 2]


def test_a_real_run_reads_no_lock_and_a_dry_run_of_the_same_does(
    pg: PostgresBackend, folder: Path
) -> None:
    accounts(pg)
    sql_migration(folder, "0001_column.sql", "ALTER TABLE accounts ADD COLUMN c integer",
                  "CREATE INDEX accounts_c ON accounts (c)")
    queries, replies = {}, {}
    for request_id, params in ((b"d1", DRY_RUN), (b"m1", Params({}))):
        engine = engine_on(pg, folder)
        session = Recording(engine.store.connection)
        engine.store.connection = session
        replies[request_id] = engine.migrate(request_id, params)
        queries[request_id] = session.queries

    assert [entry["mode"] for entry in replies[b"d1"]["locks"]] == ["AccessExclusiveLock"]
    assert "locks" not in replies[b"m1"] and pg.versions() == [1]
    assert queries[b"d1"].count(HELD) == 2  # one per statement
    assert queries[b"d1"].count(SNAPSHOT) == 1  # one per migration
    assert not [query for query in queries[b"m1"]
                if "pg_locks" in query or "pg_relation_size" in query]


class Recording:
    """A psycopg connection that keeps the text of every query executed on it."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.queries: list[str] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self.queries.append(str(query))
        return self._connection.execute(query, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def test_a_sqlite_dry_run_reply_has_no_locks(tmp_path: Path, folder: Path) -> None:
    db = SqliteBackend(tmp_path / "db.sqlite")
    try:
        sql_migration(folder, "0001_table.sql", "CREATE TABLE t (id integer)")
        engine = engine_on(db, folder)
        assert engine.migrate(b"d1", DRY_RUN) == {
            "type": "migrations_applied", "count": 1,
            "migrations": [{"version": 1, "name": "table", "status": "applied"}],
            "dry_run": True,
        }
    finally:
        db.close()


def test_the_strongest_mode_follows_postgresql_order() -> None:
    assert strongest(["RowExclusiveLock", "ShareLock", "AccessShareLock"]) == "ShareLock"
    assert strongest(["ShareUpdateExclusiveLock", "RowExclusiveLock"]) == \
        "ShareUpdateExclusiveLock"
    assert strongest(["SIReadLock"]) is None
    assert strongest(reversed(LOCK_MODES)) == "AccessExclusiveLock"


# -- what the command prints ----------------------------------------------------------------


def test_migrate_dry_run_prints_the_locks_as_a_table_marking_access_exclusive_and_rewrites(
    pg: PostgresBackend, folder: Path, workspace: Any
) -> None:
    accounts(pg)
    sql_migration(folder, "0001_index.sql", "CREATE INDEX accounts_email ON accounts (email)")
    sql_migration(folder, "0002_widen.sql", "ALTER TABLE accounts ALTER COLUMN x TYPE bigint")
    workspace.db = pg.url

    done = subprocess.run(
        workspace.node_command("--schema", pg.schema, "--migrations", str(folder),
                               "migrate", "--dry-run"),
        capture_output=True, text=True, env={**workspace.env, "NO_COLOR": "1"},
        cwd=workspace.root, timeout=PROCESS_TIMEOUT_S,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["!", "version"])
    assert lines[header].split() == ["!", "version", "relation", "mode", "rewritten", "size"]
    rows = [line.split() for line in lines[header + 1:header + 5]]
    kb = f"{round(size(pg, 'accounts') / 1024)}"
    assert rows == [
        ["1", f"{pg.schema}.accounts", "SHARE", "no", kb, "kB"],
        ["!", "2", f"{pg.schema}.accounts", "ACCESS", "EXCLUSIVE", "yes", kb, "kB"],
        ["!", "2", f"{pg.schema}.accounts_pkey", "ACCESS", "EXCLUSIVE", "yes", *rows[2][-2:]],
        ["!", "2", f"{pg.schema}.accounts_x", "ACCESS", "EXCLUSIVE", "yes", *rows[3][-2:]],
    ]
    assert any(line.startswith("! ") and "ACCESS EXCLUSIVE" in line
               for line in lines[header + 5:])
    assert lines[-1].startswith("2 migrations would be applied in ")
    assert "\x1b[" not in done.stdout
    assert pg.versions() == []


def test_sizes_read_as_pg_size_pretty_writes_them_and_no_locks_is_a_sentence() -> None:
    assert [size_text(n) for n in (0, 10239, 10240, 8863744, 10 * 1024**3, None)] == [
        "0 bytes", "10239 bytes", "10 kB", "8656 kB", "10 GB", "unknown"]
    assert lock_table([], Style(io.StringIO())) == "no existing relation was locked"
