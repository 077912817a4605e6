"""Tests for worker.stores.postgres.store: what only PostgreSQL has, and the same replies as SQLite.

The engine tests that make sense on both backends are in tests/test_engine.py, which runs
each on both. Here: the SQL text functions (no server needed), replies compared byte for
byte with SQLite's, SQL files with dollar quotes, aborted transactions, deferred
constraints, lock timeouts, the advisory owner lock, table names and connection errors.

The module gets one fresh database on the server at 127.0.0.1:5432 (`pg_database` in
tests/conftest.py), dropped at the end; each test works in a schema of its own (its
tracking tables and, through the URL's search_path, its migrations' tables), looked into
through a separate connection, as another program would (tests/backends.py). Without a
server answering there, the tests that need one are skipped.
"""

from __future__ import annotations

import re
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (extra: postgres)")

from broker import codec  # noqa: E402
from broker.errors import (  # noqa: E402
    MIGRATION_FAILED,
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
    ReplyError,
)
from tests.backends import PostgresBackend  # noqa: E402
from worker.catalog import Catalog  # noqa: E402
from worker.engine import Engine  # noqa: E402
from worker.lock import AlreadyOwned  # noqa: E402
from worker.params import Params  # noqa: E402
from worker.stores.postgres.sql import to_psycopg, transaction_control, translate  # noqa: E402
from worker.stores.postgres.store import PostgresStore  # noqa: E402
from worker.stores.sqlite.store import SqliteStore  # noqa: E402

SEED = Path(__file__).resolve().parent.parent / "migrations"
Reply = dict[str, Any]
Script = list[tuple[str, bytes, dict[str, Any]]]  # (handler, request id, fields)


# -- fixtures and helpers ------------------------------------------------------------------


class Pg(PostgresBackend):
    """One test's schema (see PostgresBackend) and migrations folder."""

    def __init__(self, database: str, root: Path) -> None:
        super().__init__(database)
        self.folder = root / "migrations"
        self.folder.mkdir()
        self.root = root

    def engine(self, folder: Path | None = None, **kwargs: Any) -> Engine:
        """A fresh store and catalog, like a newly started worker."""
        return Engine(self.store(**kwargs), Catalog(folder or self.folder))

    def sqlite_engine(self, folder: Path | None = None) -> Engine:
        store = self.keep(SqliteStore(self.root / "db.sqlite"))
        return Engine(store, Catalog(folder or self.folder))

    def write(self, filename: str, source: str) -> Path:
        path = self.folder / filename
        path.write_text(textwrap.dedent(source))
        return path

    def table_migration(self, version: int) -> Path:
        return self.write(
            f"{version:04d}_t{version}.py",
            f"""
            def up(db):
                db.execute("CREATE TABLE t{version} (id integer)")

            def down(db):
                db.execute("DROP TABLE t{version}")
            """,
        )


@pytest.fixture
def pg(pg_database: str, tmp_path: Path) -> Iterator[Pg]:
    space = Pg(pg_database, tmp_path)
    try:
        yield space
    finally:
        space.close()


def outcome(call: Callable[[], Reply]) -> Reply:
    """The reply body a request gets, whether the handler returned it or raised it."""
    try:
        return call()
    except ReplyError as error:
        return error.body()


def run(engine: Engine, script: Script, src: str | None = "admin") -> list[Reply]:
    replies = []
    for handler, request_id, fields in script:
        engine.new_batch()
        replies.append(outcome(partial(getattr(engine, handler), request_id, Params(fields, src))))
    return replies


def run_both(pg: Pg, script: Script, folder: Path | None = None) -> list[Reply]:
    """The script's replies on PostgreSQL, after checking they are SQLite's, byte for byte."""
    on_sqlite = run(pg.sqlite_engine(folder), script)
    on_postgres = run(pg.engine(folder), script)
    assert [codec.pack(reply) for reply in on_postgres] == [
        codec.pack(reply) for reply in on_sqlite
    ]
    return on_postgres


def entries(status: str, *versions: int) -> list[dict[str, Any]]:
    return [{"version": v, "name": f"t{v}", "status": status} for v in versions]


# -- 1. SQL text: placeholders and transaction control, no server needed -------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ?", "SELECT %s"),
        ("SELECT '?', ?", "SELECT '?', %s"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ("SELECT E'\\'?', ?", "SELECT E'\\'?', %s"),
        ("SELECT 'a\\', ?", "SELECT 'a\\', %s"),  # no E: the backslash is a character
        ('SELECT "a?b" FROM "t""?", ?', 'SELECT "a?b" FROM "t""?", %s'),
        ("SELECT ? -- why?\n, ?", "SELECT %s -- why?\n, %s"),
        ("SELECT /* a /* nested ? */ still ? */ ?", "SELECT /* a /* nested ? */ still ? */ %s"),
        ("SELECT $$?$$, $tag$ $$ ? $tag$, ?", "SELECT $$?$$, $tag$ $$ ? $tag$, %s"),
        ("SELECT $1, a$b, ?", "SELECT $1, a$b, %s"),
        ("SELECT 5 % ?, '100%', $$%$$", "SELECT 5 %% %s, '100%%', $$%%$$"),
        ("SELECT ? -- 50%", "SELECT %s -- 50%%"),
        ("SELECT '?", "SELECT '?"),  # unclosed: left for PostgreSQL to report
    ],
)
def test_qmark_placeholders_become_psycopg_ones_only_in_code_and_every_percent_is_doubled(
    sql: str, expected: str
) -> None:
    assert translate(sql) == expected


def test_named_placeholders_become_psycopg_ones_and_casts_stay_as_they_are() -> None:
    assert (
        translate("SELECT :a, ':b', x::int, :c_1, '%' -- :d", named=True)
        == "SELECT %(a)s, ':b', x::int, %(c_1)s, '%%' -- :d"
    )


def test_sql_without_parameters_is_handed_over_exactly_as_written() -> None:
    text = "SELECT '100%', data ? 'key', $1 FROM t; SELECT 2"
    assert to_psycopg(text, ()) == (text, None)
    assert to_psycopg(text, {}) == (text, None)
    assert to_psycopg("SELECT ?", [1]) == ("SELECT %s", [1])
    assert to_psycopg("SELECT :n", {"n": 1}) == ("SELECT %(n)s", {"n": 1})


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("COMMIT", "COMMIT"),
        ("commit;", "COMMIT"),
        ("  -- why;\n BEGIN", "BEGIN"),
        ("/* x */ROLLBACK", "ROLLBACK"),
        ("END", "END"),
        ("ABORT", "ABORT"),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION ISOLATION"),
        ("ROLLBACK AND CHAIN", "ROLLBACK AND CHAIN"),
        ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
        ("CREATE TABLE a (x int); COMMIT", "COMMIT"),
        ("SELECT 1;commit;SELECT 2", "COMMIT"),
    ],
)
def test_statements_that_begin_or_end_a_transaction_are_found_in_any_position(
    sql: str, refused: str
) -> None:
    assert transaction_control(sql) == refused


@pytest.mark.parametrize(
    "sql",
    [
        "SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "rollback work to a",
        "RELEASE SAVEPOINT a",
        "SELECT 'COMMIT'",
        'SELECT "commit" FROM t',
        "SELECT 1 -- ; COMMIT",
        "SELECT 1 /* ; END */",
        "DO $$ BEGIN PERFORM 1; END $$",
        "PREPARE q AS SELECT 1",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql"
        " BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END",
        "",
    ],
)
def test_savepoints_strings_comments_and_function_bodies_are_not_transaction_control(
    sql: str,
) -> None:
    assert transaction_control(sql) is None


# -- 2. the seed, byte for byte as on SQLite -----------------------------------------------


def test_the_seed_migrations_get_the_replies_sqlite_gives_byte_for_byte(pg: Pg) -> None:
    script: Script = [
        ("status", b"s1", {}),
        ("migrate", b"m1", {}),
        ("status", b"s2", {}),
        ("rollback", b"r1", {}),
        ("status", b"s3", {}),
        ("migrate", b"m2", {}),
        ("migrate", b"m3", {}),
    ]
    replies = run_both(pg, script, SEED)

    assert replies[1] == {
        "type": "migrations_applied", "count": 2,
        "migrations": [{"version": 1, "name": "create_users", "status": "applied"},
                       {"version": 2, "name": "add_posts_table", "status": "applied"}],
    }
    assert replies[3] == {"type": "migration_rolled_back", "version": 2,
                          "name": "add_posts_table"}
    assert replies[6] == {"type": "migrations_applied", "count": 0, "migrations": []}
    assert pg.tables() == {"users", "posts"}
    assert pg.versions() == [1, 2]


# -- 3. failures leave nothing -------------------------------------------------------------


def test_a_migration_that_swallows_a_database_error_fails_because_postgres_aborted_it(
    pg: Pg,
) -> None:
    pg.write(
        "0001_stubborn.py",
        """
        import psycopg

        def up(db):
            db.execute("CREATE TABLE stubborn (x integer)")
            try:
                db.execute("INSERT INTO nowhere VALUES (1)")
            except psycopg.Error:
                pass
        """,
    )

    failed = outcome(lambda: pg.engine().migrate(b"m1"))

    assert failed["code"] == MIGRATION_FAILED
    assert "aborted its transaction" in failed["failed"]["error"]
    assert pg.tables() == set()
    assert pg.versions() == []


# -- 4. SQL files --------------------------------------------------------------------------

NOTES_SQL = """-- migrate:up
CREATE TABLE notes (
    id bigint PRIMARY KEY, -- the key; unique
    body text NOT NULL DEFAULT 'a;b'
); -- a comment; with ;
CREATE FUNCTION note_length(n notes) RETURNS integer AS $$ SELECT length(n.body) $$ LANGUAGE sql;
CREATE FUNCTION shout(t text) RETURNS text AS $body$ SELECT upper(t) || '!' $body$ LANGUAGE sql;
INSERT INTO notes (id) VALUES (1);
INSERT INTO notes VALUES (2, 'it''s; 100% fine -- not a comment ?');

-- migrate:down
DROP FUNCTION shout(text);
DROP FUNCTION note_length(notes);
DROP TABLE notes;"""


def test_a_sql_file_with_dollar_quoted_bodies_and_semicolons_in_strings_applies_and_reverts(
    pg: Pg,
) -> None:
    pg.write("0001_notes.sql", NOTES_SQL)
    engine = pg.engine()

    assert engine.migrate(b"m1")["count"] == 1
    assert pg.query("SELECT id, body, note_length(notes), shout(body) FROM notes ORDER BY id") == [
        (1, "a;b", 3, "A;B!"),
        (2, "it's; 100% fine -- not a comment ?", 34, "IT'S; 100% FINE -- NOT A COMMENT ?!"),
    ]
    assert engine.rollback(b"r1") == {"type": "migration_rolled_back", "version": 1,
                                      "name": "notes"}
    assert pg.tables() == set()
    assert pg.query("SELECT 1 FROM pg_proc WHERE proname IN ('shout', 'note_length')") == []


def test_a_plpgsql_function_and_trigger_from_python_apply_in_one_statement(pg: Pg) -> None:
    pg.write(
        "0001_audit.py",
        '''
        def up(db):
            db.execute("CREATE TABLE accounts (id integer PRIMARY KEY)")
            db.execute("CREATE TABLE audit (account integer, what text)")
            db.execute("""
                CREATE FUNCTION audit_account() RETURNS trigger AS $$
                BEGIN
                    INSERT INTO audit VALUES (NEW.id, 'created; ok?');
                    RETURN NEW;
                END;
                $$ LANGUAGE plpgsql
            """)
            db.execute("CREATE TRIGGER accounts_audit AFTER INSERT ON accounts"
                       " FOR EACH ROW EXECUTE FUNCTION audit_account()")
            db.execute("INSERT INTO accounts VALUES (?)", (7,))
        ''',
    )

    pg.engine().migrate(b"m1")

    assert pg.query("SELECT account, what FROM audit") == [(7, "created; ok?")]


def test_a_sql_file_with_a_plpgsql_body_holding_semicolons_applies(pg: Pg) -> None:
    from worker.stores.postgres.sql import (
        split_statements,  # what a PostgreSQL worker's catalog splits by
    )

    pg.write(
        "0001_plpgsql.sql",
        "-- migrate:up\n"
        "CREATE FUNCTION one() RETURNS integer AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql;\n"
        "-- migrate:down\nDROP FUNCTION one();\n",
    )
    pg.write(
        "0002_tagged_notes.sql",
        "-- migrate:up\n"
        "CREATE TABLE notes (body text, tag text);\n"
        "CREATE FUNCTION tag_note() RETURNS trigger AS $body$\n"
        "BEGIN\n"
        "    -- a comment; in the body\n"
        "    NEW.tag := 'tagged; ' || one() || E' \\'ok\\'' || $$;$$;\n"
        "    RETURN NEW;\n"
        "END\n"
        "$body$ LANGUAGE plpgsql;\n"
        "CREATE TRIGGER notes_tag BEFORE INSERT ON notes\n"
        "    FOR EACH ROW EXECUTE FUNCTION tag_note();\n"
        "-- migrate:down\n"
        "DROP TRIGGER notes_tag ON notes;\n"
        "DROP FUNCTION tag_note();\n"
        "DROP TABLE notes;\n",
    )
    engine = Engine(pg.store(), Catalog(pg.folder, split_statements=split_statements))
    functions = (
        "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = %s ORDER BY proname"
    )

    assert engine.migrate(b"m1")["count"] == 2
    pg.query("INSERT INTO notes (body) VALUES ('hello')")
    assert pg.query("SELECT body, tag FROM notes") == [("hello", "tagged; 1 'ok';")]
    assert pg.query(functions, (pg.schema,)) == [("one",), ("tag_note",)]

    assert engine.rollback(b"r1", Params({"to": 0}))["count"] == 2
    assert pg.tables() == set()
    assert pg.query(functions, (pg.schema,)) == []
    assert pg.versions() == []


def test_a_sql_migration_marked_transaction_false_runs_outside_one(pg: Pg) -> None:
    pg.write("0001_notes.sql", NOTES_SQL)
    pg.write(
        "0002_index.sql",
        "-- migrate:up transaction:false\n"
        "CREATE INDEX CONCURRENTLY notes_body ON notes (body);\n"
        "-- migrate:down transaction:false\n"
        "DROP INDEX CONCURRENTLY notes_body;\n",
    )
    engine = pg.engine()

    assert engine.migrate(b"m1")["count"] == 2
    assert "notes_body" in pg.relations()
    engine.rollback(b"r1")
    assert "notes_body" not in pg.relations()
    assert pg.versions() == [1]


# -- 5. targets, validate, baseline: the replies SQLite gives ------------------------------


def test_migrate_to_a_version_and_rollbacks_of_several_steps_move_both_ways(pg: Pg) -> None:
    for version in range(1, 6):
        pg.table_migration(version)

    up_to_3, rest, back_to_2, one_step, unknown, all_of_it = run_both(pg, [
        ("migrate", b"m1", {"to": 3}),
        ("migrate", b"m2", {}),
        ("rollback", b"r1", {"to": 2}),
        ("rollback", b"r2", {"steps": 1}),
        ("rollback", b"r3", {"to": 9}),
        ("rollback", b"r4", {"to": 0}),
    ])

    assert up_to_3["migrations"] == entries("applied", 1, 2, 3)
    assert rest["migrations"] == entries("applied", 4, 5)
    assert back_to_2 == {"type": "migrations_rolled_back", "count": 3,
                         "migrations": entries("rolled_back", 5, 4, 3)}
    assert one_step["migrations"] == entries("rolled_back", 2)
    assert unknown["code"] == PRECONDITION_FAILED
    assert all_of_it["migrations"] == entries("rolled_back", 1)
    assert pg.tables() == set()
    assert pg.versions() == []


def test_validate_reports_an_edited_file_and_migrate_refuses_as_on_sqlite(pg: Pg) -> None:
    pg.table_migration(1)
    path = pg.table_migration(2)
    sqlite_engine, postgres_engine = pg.sqlite_engine(), pg.engine()
    for engine in (sqlite_engine, postgres_engine):
        engine.migrate(b"m1")
    path.write_text(path.read_text() + "\n# edited\n")
    pg.table_migration(3)

    script: Script = [("validate", b"v1", {}), ("migrate", b"m2", {})]
    checked, refused = run(postgres_engine, script)

    assert [codec.pack(r) for r in run(sqlite_engine, script)] == [
        codec.pack(checked), codec.pack(refused)]
    assert checked == {"type": "validation", "ok": False,
                       "problems": [{"version": 2, "name": "t2", "kind": "changed"}]}
    assert refused["code"] == PRECONDITION_FAILED and refused["problems"] == checked["problems"]
    assert pg.versions() == [1, 2]


def test_baseline_records_without_running_and_is_refused_once_anything_is_recorded(
    pg: Pg,
) -> None:
    for version in range(1, 4):
        pg.table_migration(version)

    baselined, status, migrated, refused = run_both(pg, [
        ("baseline", b"b1", {"to": 2}),
        ("status", b"s1", {}),
        ("migrate", b"m1", {}),
        ("baseline", b"b2", {"to": 3}),
    ])

    assert baselined == {"type": "migrations_baselined", "count": 2,
                         "migrations": entries("baselined", 1, 2)}
    assert [m["applied"] for m in status["migrations"]] == [True, True, False]
    assert migrated["migrations"] == entries("applied", 3)
    assert refused["code"] == PRECONDITION_FAILED
    assert pg.tables() == {"t3"}  # 1 and 2 were recorded, never run
    assert pg.versions() == [1, 2, 3]


# -- 6. the db object: parameters and transaction control ----------------------------------


def test_qmark_and_named_parameters_and_literal_question_marks_and_percents_arrive_intact(
    pg: Pg,
) -> None:
    pg.write(
        "0001_params.py",
        """
        def up(db):
            db.execute("CREATE TABLE t (n integer, s text)")
            db.execute("INSERT INTO t VALUES (?, ?)", (1, "a?b"))
            db.execute("INSERT INTO t VALUES (?, '?') -- a comment?", (2,))
            db.execute("INSERT INTO t VALUES (?, '100%' || ?)", (3, "%s"))
            db.execute("INSERT INTO t VALUES (4, '5% of ?')")
            db.executemany("INSERT INTO t VALUES (?, ?)", [(5, "x"), (6, "y%")])
            db.execute("INSERT INTO t VALUES (:n, :s)", {"n": 7, "s": ":s?"})
            db.execute('INSERT INTO "t" ("n", "s") VALUES (?, $$?%$$)', (8,))
            db.executemany("INSERT INTO t VALUES (:n, '%' || :s)", [{"n": 9, "s": "z"}])
            total = db.query("SELECT sum(n) FROM t WHERE n > ? AND s LIKE '%'", (0,))[0][0]
            assert db.query("INSERT INTO t VALUES (?, ?)", (10, "none")) == []
            assert db.execute("SELECT n FROM t WHERE n = ?", (1,)).fetchone() == (1,)
            db.execute("CREATE TABLE total (n bigint)")
            db.execute("INSERT INTO total VALUES (?)", (total,))
        """,
    )

    pg.engine().migrate(b"m1")

    assert pg.query("SELECT n, s FROM t ORDER BY n") == [
        (1, "a?b"), (2, "?"), (3, "100%%s"), (4, "5% of ?"), (5, "x"), (6, "y%"),
        (7, ":s?"), (8, "?%"), (9, "%z"), (10, "none")]
    assert pg.query("SELECT n FROM total") == [(45,)]


# COMMIT, BEGIN, ROLLBACK and END: test_engine.py, on both backends.
@pytest.mark.parametrize("statement", ["START TRANSACTION", "SELECT 1; COMMIT"])
def test_start_transaction_and_a_commit_after_another_statement_are_refused_too(
    pg: Pg, statement: str
) -> None:
    pg.table_migration(1)
    pg.write(
        "0002_sneaky.py",
        f"""
        def up(db):
            db.execute("CREATE TABLE sneaky (x integer)")
            db.execute({statement!r})
            db.execute("CREATE TABLE after (x integer)")
        """,
    )

    failed = outcome(lambda: pg.engine().migrate(b"m1"))

    assert failed["code"] == MIGRATION_FAILED
    assert failed["applied"] == entries("applied", 1)
    assert failed["failed"]["error"].startswith("TransactionControlRefused: ")
    assert pg.tables() == {"t1"}
    assert pg.versions() == [1]


# -- 7. foreign keys off, locks held by others ---------------------------------------------

PARENTS_SQL = """-- migrate:up
CREATE TABLE parent (id integer PRIMARY KEY);
CREATE TABLE child (id integer PRIMARY KEY, parent integer REFERENCES parent (id) DEFERRABLE);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (10, 1), (20, 2);
-- migrate:down
DROP TABLE child;
DROP TABLE parent;
"""


@pytest.mark.parametrize(("restore", "applied"), [(True, True), (False, False)])
@pytest.mark.parametrize("dry_run", [False, True])
def test_foreign_keys_off_defers_the_check_to_before_the_commit(
    pg: Pg, restore: bool, applied: bool, dry_run: bool
) -> None:
    pg.write("0001_parents.sql", PARENTS_SQL)
    pg.write(
        "0002_renumber.sql",
        "-- migrate:foreign_keys off\n-- migrate:up\n"
        "DELETE FROM parent WHERE id = 2;\n"
        + ("INSERT INTO parent VALUES (2);\n" if restore else "")
        + "-- migrate:down\nSELECT 1;\n",
    )
    engine = pg.engine()
    engine.migrate(b"m0", Params({"to": 1}))

    reply = outcome(lambda: engine.migrate(b"m1", Params({"dry_run": dry_run})))

    if applied:
        assert reply["migrations"] == [{"version": 2, "name": "renumber", "status": "applied"}]
    else:
        assert reply["code"] == MIGRATION_FAILED and reply["failed"]["version"] == 2
        assert reply["failed"]["error"].startswith("ForeignKeyViolation: ")
        assert reply["failed"]["error"].endswith(" child")
    assert pg.query("SELECT id FROM parent ORDER BY id") == [(1,), (2,)]
    assert pg.versions() == ([1, 2] if applied and not dry_run else [1])


def test_a_lock_held_by_another_program_answers_11_and_a_resend_applies(pg: Pg) -> None:
    pg.table_migration(1)
    pg.write(
        "0002_alter.py",
        """
        def up(db):
            db.execute("ALTER TABLE t1 ADD COLUMN note text")
        """,
    )
    url = pg.url_with(f"search_path={pg.schema}", "lock_timeout=300")
    engine = pg.engine(url=url)
    assert engine.store.connection.execute("SHOW lock_timeout").fetchone() == ("300ms",)
    engine.migrate(b"m0", Params({"to": 1}))

    with psycopg.connect(pg.url) as other:  # not autocommit: the lock lasts until the end
        other.execute("LOCK TABLE t1 IN ACCESS SHARE MODE")
        busy = outcome(lambda: engine.migrate(b"m1"))
    resent = engine.migrate(b"m1")

    assert busy["code"] == TEMPORARILY_UNAVAILABLE
    assert "lock timeout" in busy["text"] and "applied" not in busy
    assert resent["migrations"] == [{"version": 2, "name": "alter", "status": "applied"}]
    assert pg.versions() == [1, 2]


def test_a_lock_wait_ends_after_five_seconds_unless_the_url_says_otherwise(pg: Pg) -> None:
    assert pg.store().connection.execute("SHOW lock_timeout").fetchone() == ("5s",)


# -- 8. the owner lock, tables, change stamp, connection errors ----------------------------


def test_a_second_store_on_the_same_table_cannot_own_it_until_the_first_closes(pg: Pg) -> None:
    first = pg.store()
    first.acquire_owner(b"1\n")
    first.acquire_owner(b"1\n")  # already ours: nothing to do
    second = pg.store()

    with pytest.raises(AlreadyOwned) as raised:
        second.acquire_owner(b"2\n", wait=False)

    text = str(raised.value)
    assert f"{pg.schema}.schema_migrations" in text
    assert re.search(r"held by worker pid \d+ on ", text)
    assert f"backend pid {first.connection.info.backend_pid}" in text
    assert "in postgresql://postgres@127.0.0.1:5432/mn_test_" in text
    first.close()
    # The server ends the session, and drops its lock, a moment after the client closes.
    deadline = time.monotonic() + 5
    while True:
        try:
            second.acquire_owner(b"2\n", wait=False)
            break
        except AlreadyOwned:
            assert time.monotonic() < deadline, "the closed session's lock was never dropped"
            time.sleep(0.02)
    second.release_owner()
    pg.store().acquire_owner(b"3\n")


def test_a_stop_during_the_wait_for_the_owner_lock_cancels_it_and_closes_the_connection(
    pg: Pg,
) -> None:
    first = pg.store()
    first.acquire_owner(b"1\n")
    second = pg.store()

    class Stop(Exception):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stop

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Stop):
            second.acquire_owner(b"2\n", wait=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert second.connection is None  # the session that waited is closed and forgotten
    second.release_owner()  # a closed store lets go quietly
    deadline = time.monotonic() + 5
    while pg.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
        assert time.monotonic() < deadline, "the server still waits for the lock"
        time.sleep(0.05)
    first.release_owner()
    pg.store().acquire_owner(b"3\n", wait=True)


def test_a_different_table_name_gives_independent_tracking_and_owner_lock(pg: Pg) -> None:
    pg.table_migration(1)
    other_folder = pg.root / "other"
    other_folder.mkdir()
    (other_folder / "0001_o1.py").write_text(
        "def up(db):\n    db.execute('CREATE TABLE o1 (x integer)')\n"
    )
    main, other = pg.engine(), pg.engine(other_folder, table="other_migrations")
    main.store.acquire_owner(b"1\n")
    other.store.acquire_owner(b"2\n")

    main.migrate(b"m1")

    assert other.status(b"s1")["migrations"] == [{"version": 1, "name": "o1", "applied": False}]
    assert other.migrate(b"m1")["migrations"] == [
        {"version": 1, "name": "o1", "status": "applied"}]
    assert pg.versions() == [1]
    assert pg.query("SELECT version FROM other_migrations") == [(1,)]
    assert {"other_migrations_replies", "other_migrations_history"} <= pg.relations()
    assert pg.tables() >= {"t1", "o1"}


def test_data_version_moves_when_another_connection_commits(pg: Pg) -> None:
    pg.table_migration(1)
    pg.table_migration(2)
    watcher, writer = pg.store(), pg.engine()
    assert watcher.data_version() == 0  # nothing written yet, not even the tracking tables
    writer.migrate(b"m1", Params({"to": 1}))
    stamp = watcher.data_version()
    assert watcher.data_version() == stamp

    writer.migrate(b"m2")
    after_apply = watcher.data_version()
    writer.rollback(b"r1")
    after_rollback = watcher.data_version()
    pg.query("DELETE FROM schema_migrations")
    by_hand = watcher.data_version()

    assert len({stamp, after_apply, after_rollback, by_hand}) == 4


def test_a_password_never_appears_in_a_connection_error(pg: Pg) -> None:
    unreachable = PostgresStore("postgresql://postgres:s3cr3t-pw@127.0.0.1:1/nowhere")
    with pytest.raises(ReplyError) as raised:
        unreachable.applied()
    assert raised.value.code == TEMPORARILY_UNAVAILABLE
    assert "s3cr3t-pw" not in raised.value.text
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/nowhere" in raised.value.text
    assert raised.value.__cause__ is None and raised.value.__suppress_context__

    with pytest.raises(ValueError) as malformed:
        PostgresStore("postgresql://postgres:s3%zzcr3t@127.0.0.1/x")
    assert "s3" not in str(malformed.value)

    store = PostgresStore(pg.url.replace("postgres@", "postgres:s3cr3t-pw@"), schema=pg.schema)
    pg.keep(store)
    assert "s3cr3t-pw" not in store.database and "s3cr3t-pw" not in store.connection.info.dsn


def test_a_table_name_postgres_would_cut_is_refused() -> None:
    with pytest.raises(ValueError, match="63 bytes"):
        PostgresStore("postgresql://127.0.0.1:1/x", table="t" * 60)


def test_a_store_hands_libpq_the_secrets_the_node_put_in_its_environment(
    pg: Pg, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a node started with postgresql://postgres:p%40ss@...?sslpassword=k%26ey%20pw sets.
    monkeypatch.setenv("PGPASSWORD", "p@ss")
    monkeypatch.setenv("MIGRATIONS_PGSSLPASSWORD", "k&ey pw")
    store = pg.store(url=pg.url + "&sslmode=disable")
    given = {option.keyword: option.val for option in store.connection.pgconn.info}
    assert given[b"password"] == b"p@ss" and store.connection.info.password == "p@ss"
    assert given[b"sslpassword"] == b"k&ey pw"
    assert "p@ss" not in store.database and "k&ey" not in store.database


# -- a transaction is never left open ------------------------------------------------------


def test_a_begin_whose_lookup_fails_leaves_no_transaction_open(pg: Pg) -> None:
    from psycopg.pq import TransactionStatus

    store = pg.store()
    lookup = store._existing_sql
    store._existing_sql = "SELECT pg_catalog.pg_cancel_backend(pg_catalog.pg_backend_pid())"
    with pytest.raises(psycopg.errors.QueryCanceled), store.transaction():
        pass  # a cancel that reached the server late lands on BEGIN's lookup

    assert store.connection.info.transaction_status == TransactionStatus.IDLE
    store._existing_sql = lookup
    engine = Engine(store, Catalog(pg.folder))
    pg.table_migration(1)
    assert engine.migrate(b"m1")["count"] == 1


def test_a_failed_transaction_found_open_is_rolled_back_before_the_next_write(pg: Pg) -> None:
    store = pg.store()
    store.connection.execute("BEGIN")
    with pytest.raises(psycopg.errors.DivisionByZero):
        store.connection.execute("SELECT 1 / 0")
    pg.table_migration(1)

    assert Engine(store, Catalog(pg.folder)).migrate(b"m1")["count"] == 1
    assert pg.versions() == [1]


# A statement that cancels itself the first time it runs, as a cancel meant for migration
# code that reached the server late stops the store's next statement (the session's own
# pg_cancel_backend: a real cancel, landing on the statement that sends it).
CANCELLED_ONCE = ("SELECT CASE WHEN nextval('late_cancel') = 1"
                  " THEN pg_catalog.pg_cancel_backend(pg_catalog.pg_backend_pid()) END")


def test_a_late_cancel_that_stops_a_statement_of_the_store_sends_it_again(pg: Pg) -> None:
    store = pg.store()
    store.connection.execute("CREATE TEMPORARY SEQUENCE late_cancel")

    store._run(CANCELLED_ONCE)

    assert store.connection.execute("SELECT last_value FROM late_cancel").fetchone() == (2,)
    pg.table_migration(1)
    assert Engine(store, Catalog(pg.folder)).migrate(b"m1")["count"] == 1


def test_a_late_cancel_inside_a_step_is_error_11_and_the_step_is_rolled_back(pg: Pg) -> None:
    from broker.errors import TEMPORARILY_UNAVAILABLE, ReplyError

    store = pg.store()
    store.connection.execute("CREATE TEMPORARY SEQUENCE late_cancel")
    with pytest.raises(ReplyError) as raised, store.transaction():
        store._run("CREATE TABLE rolled_back (id integer)")
        store._run(CANCELLED_ONCE)

    assert raised.value.code == TEMPORARILY_UNAVAILABLE
    assert "reached the server late" in raised.value.text
    assert "rolled_back" not in pg.tables()
    pg.table_migration(1)
    assert Engine(store, Catalog(pg.folder)).migrate(b"m1")["count"] == 1
