"""SQL migration files (dbmate's `-- migrate:up` / `-- migrate:down`) beside Python ones.

Real files in tmp_path, loaded through the Catalog, run against a real SQLite file inside
BEGIN ... COMMIT through the guarded `db` object, as the engine runs them.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.errors import PRECONDITION_FAILED
from tests.sqlite_steps import run, tables
from worker.catalog import (
    Catalog,
    DuplicateVersion,
    Loaded,
    Migration,
    VersionZero,
    checksum_matches,
    checksum_of,
)
from worker.sql_file import SqlFileError, parse

AN_HOUR_AGO_NS = 3600 * 10**9  # older than the catalog's racy window


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "test.db", isolation_level=None)
    yield connection
    connection.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    return folder


def write(folder: Path, filename: str, text: str | bytes) -> Path:
    """Write a file byte for byte (no newline translation)."""
    path = folder / filename
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def load(folder: Path, filename: str, text: str | bytes) -> Loaded:
    write(folder, filename, text)
    (migration,) = [m for m in Catalog(folder).migrations() if m.path.endswith(filename)]
    return migration.load()


def time_ns_ago(ns: int) -> int:
    return time.time_ns() - ns


def sql_error(text: str) -> str:
    with pytest.raises(SqlFileError) as caught:
        parse(text, "0001_bad.sql")
    return str(caught.value)


# -- running SQL files ------------------------------------------------------------------------


def test_a_sql_migration_with_a_trigger_and_a_semicolon_in_a_string_applies_and_its_down_reverts(
    folder, connection
):
    loaded = load(
        folder,
        "0001_orders.sql",
        """-- migrate:up
CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER);
CREATE TABLE audit (what TEXT);
CREATE TRIGGER orders_audit AFTER INSERT ON orders
BEGIN
    INSERT INTO audit VALUES ('insert; into orders');
    INSERT INTO audit VALUES ('total=' || NEW.total);
END;
INSERT INTO orders (total) VALUES (42);

-- migrate:down
DROP TRIGGER orders_audit;
DROP TABLE audit;
DROP TABLE orders;
""",
    )

    run(connection, loaded.up)
    assert tables(connection) == {"orders", "audit"}
    assert connection.execute("SELECT what FROM audit ORDER BY rowid").fetchall() == [
        ("insert; into orders",),
        ("total=42",),
    ]

    run(connection, loaded.down)
    assert tables(connection) == set()
    assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_a_semicolon_inside_a_comment_does_not_split_a_statement(folder, connection):
    loaded = load(
        folder,
        "0001_notes.sql",
        """-- migrate:up
-- a note; with a semicolon
CREATE TABLE notes (body TEXT); -- trailing; comment
/* a block; comment */
INSERT INTO notes VALUES ('a; b'); -- more; here
""",
    )

    run(connection, loaded.up)
    assert connection.execute("SELECT body FROM notes").fetchall() == [("a; b",)]


@pytest.mark.parametrize(
    "ending",
    ["INSERT INTO t VALUES (1);", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1); -- end"],
    ids=["statement", "statement-without-semicolon", "comment"],
)
def test_a_file_ending_without_a_newline_runs_its_last_statement(folder, connection, ending):
    loaded = load(folder, "0001_t.sql", "-- migrate:up\nCREATE TABLE t (x);\n" + ending)

    run(connection, loaded.up)
    assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_sqlite_master_keeps_the_create_text_with_its_inline_comment(folder, connection):
    create = (
        "CREATE TABLE users (\n"
        "    id INTEGER PRIMARY KEY, -- the row id; never reused\n"
        "    name TEXT /* shown; as typed */\n"
        ")"
    )
    loaded = load(folder, "0001_users.sql", f"-- migrate:up\n{create};\n")

    run(connection, loaded.up)
    (stored,) = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'users'").fetchone()
    assert stored == create
    assert "-- the row id; never reused" in stored


def test_a_failing_statement_raises_there_and_rollback_leaves_nothing_of_the_migration(
    folder, connection
):
    loaded = load(
        folder,
        "0001_broken.sql",
        """-- migrate:up
CREATE TABLE first (x);
INSERT INTO first VALUES (1);
INSERT INTO no_such_table VALUES (2);
CREATE TABLE fourth (z);
""",
    )
    seen: list[str] = []

    class Recording:
        def __init__(self, db: Any) -> None:
            self.db = db

        def execute(self, statement: str) -> object:
            seen.append(statement.strip())
            return self.db.execute(statement)

    with pytest.raises(sqlite3.OperationalError, match="no such table: no_such_table") as caught:
        run(connection, lambda db: loaded.up(Recording(db)))

    assert seen[-1] == "INSERT INTO no_such_table VALUES (2);"
    assert len(seen) == 3  # the fourth statement never ran
    assert "in statement 3 of 4 of the up section of 0001_broken.sql" in caught.value.__notes__[0]
    assert tables(connection) == set()


def test_an_empty_down_section_reverts_as_a_no_op_and_only_a_missing_one_cannot_revert(
    folder, connection
):
    no_down = load(folder, "0001_a.sql", "-- migrate:up\nCREATE TABLE a (x);\n")
    sections = ["", "\n", "\n-- nothing; to undo\n/* at; all */\n", "\n \t\n;\n\n"]
    empty_downs = [
        load(folder, f"{n:04d}_t{n}.sql",
             f"-- migrate:up\nCREATE TABLE t{n} (x);\n-- migrate:down{down}")
        for n, down in enumerate(sections, 2)
    ]

    assert no_down.up is not None and no_down.down is None
    for loaded in empty_downs:
        run(connection, loaded.up)
        run(connection, loaded.down)
    assert tables(connection) == {"t2", "t3", "t4", "t5"}
    assert parse("-- migrate:up\nSELECT 1;\n", "0001_a.sql").down is None
    assert parse("-- migrate:up\n-- migrate:down\n-- none\n", "0001_a.sql").down == []


def test_a_comment_only_section_gives_no_statements():
    assert parse("-- migrate:up\n-- nothing;\n/* at; all */\n\n", "0001_a.sql").up == []


# -- directives -------------------------------------------------------------------------------


def test_foreign_keys_off_is_declared_by_a_sql_directive_or_a_python_constant(folder):
    sql = load(folder, "0001_a.sql", "-- migrate:foreign_keys off\n-- migrate:up\nSELECT 1;\n")
    py = load(folder, "0002_b.py", "FOREIGN_KEYS = False\n\ndef up(db):\n    pass\n")
    default_sql = load(folder, "0003_c.sql", "-- migrate:up\nSELECT 1;\n")
    default_py = load(folder, "0004_d.py", "def up(db):\n    pass\n")

    assert (sql.foreign_keys, py.foreign_keys) == (False, False)
    assert (default_sql.foreign_keys, default_py.foreign_keys) == (True, True)
    assert py.up is not None and py.down is None


def test_foreign_keys_that_is_not_a_bool_is_a_type_error_naming_the_file(folder):
    write(folder, "0001_a.py", "FOREIGN_KEYS = 0\n\ndef up(db):\n    pass\n")
    (migration,) = Catalog(folder).migrations()

    with pytest.raises(TypeError) as caught:
        migration.load()
    assert str(caught.value) == "0001_a.py sets FOREIGN_KEYS to a int; it must be True or False"


@pytest.mark.parametrize(
    ("up_options", "down_options", "expected"),
    [
        ("", "", (True, True)),
        (" transaction:false", "", (False, True)),
        ("", " transaction:false", (True, False)),
        (" transaction:false", " transaction:false", (False, False)),
        (" transaction:true", " transaction:true", (True, True)),
    ],
    ids=["neither", "up-only", "down-only", "both", "both-true"],
)
def test_each_section_marker_decides_its_own_transaction(
    folder, up_options, down_options, expected
):
    text = f"-- migrate:up{up_options}\nSELECT 1;\n-- migrate:down{down_options}\nSELECT 2;\n"

    parsed = parse(text, "0001_a.sql")
    loaded = load(folder, "0001_a.sql", text)

    assert (parsed.up_transaction, parsed.down_transaction) == expected
    assert (loaded.up_transaction, loaded.down_transaction) == expected
    without_down = parse(f"-- migrate:up{up_options}\nSELECT 1;\n", "0001_a.sql")
    assert without_down.up_transaction is expected[0]


def test_a_python_files_transaction_declaration_is_for_both_up_and_down(folder):
    source = "TRANSACTION = False\n\ndef up(db):\n    pass\n\ndef down(db):\n    pass\n"
    loaded = load(folder, "0001_a.py", source)
    default = load(folder, "0002_b.py", "def up(db):\n    pass\n")

    assert (loaded.up_transaction, loaded.down_transaction) == (False, False)
    assert (default.up_transaction, default.down_transaction) == (True, True)


def test_markers_are_matched_after_trailing_whitespace_and_carriage_returns():
    parsed = parse("-- migrate:up  \r\nSELECT 1;\r\n-- migrate:down\t\r\nSELECT 2;\r\n", "a.sql")
    assert parsed.up == ["SELECT 1;"]
    assert parsed.down == ["SELECT 2;"]


def test_an_unknown_option_is_an_error_naming_it_and_its_line():
    assert sql_error("-- header\n-- migrate:up transaction:false nocache:true\nSELECT 1;\n") == (
        "0001_bad.sql line 2: unknown option 'nocache:true' after '-- migrate:up'"
        " (known: transaction:true, transaction:false, lock_timeout:SECONDS)"
    )


def test_a_sections_lock_timeout_is_its_own_in_seconds():
    parsed = parse("-- migrate:up lock_timeout:0 transaction:false\nSELECT 1;\n"
                   "-- migrate:down lock_timeout:1.5s\nSELECT 2;\n", "a.sql")
    default = parse("-- migrate:up\nSELECT 1;\n", "b.sql")

    assert (parsed.up_lock_timeout, parsed.down_lock_timeout) == (0.0, 1.5)
    assert parsed.up_transaction is False
    assert (default.up_lock_timeout, default.down_lock_timeout) == (None, None)


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf", ""])
def test_a_lock_timeout_that_is_not_seconds_is_an_error_naming_it(value):
    assert sql_error(f"-- migrate:up lock_timeout:{value}\nSELECT 1;\n") == (
        f"0001_bad.sql line 1: option lock_timeout takes a number of seconds, 0 or more,"
        f" not {value!r}"
    )


def test_a_python_files_lock_timeout_is_for_both_up_and_down(folder):
    loaded = load(folder, "0001_a.py", "LOCK_TIMEOUT = 0.25\n\ndef up(db):\n    pass\n")
    default = load(folder, "0002_b.py", "def up(db):\n    pass\n")

    assert (loaded.up_lock_timeout_s, loaded.down_lock_timeout_s) == (0.25, 0.25)
    assert (default.up_lock_timeout_s, default.down_lock_timeout_s) == (None, None)


@pytest.mark.parametrize("value", ["True", "-1", "'3'"])
def test_a_python_lock_timeout_that_is_not_seconds_is_refused(folder, value):
    with pytest.raises(TypeError, match="LOCK_TIMEOUT"):
        load(folder, "0001_a.py", f"LOCK_TIMEOUT = {value}\n\ndef up(db):\n    pass\n")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("SELECT 1;\n", "0001_bad.sql has no '-- migrate:up' line, so it has nothing to apply"),
        (
            "-- migrate:up\nSELECT 1;\n-- migrate:up\n",
            "0001_bad.sql line 3: a second '-- migrate:up' (the first is on line 1)",
        ),
        (
            "-- migrate:up\n-- migrate:down\nSELECT 1;\n-- migrate:down\n",
            "0001_bad.sql line 4: a second '-- migrate:down' (the first is on line 2)",
        ),
        (
            "-- migrate:down\nSELECT 1;\n-- migrate:up\n",
            "0001_bad.sql line 1: '-- migrate:down' comes before '-- migrate:up'",
        ),
        (
            "-- a comment\n\nCREATE TABLE early (x);\n-- migrate:up\n",
            "0001_bad.sql line 3: SQL before '-- migrate:up' belongs to no section:"
            " 'CREATE TABLE early (x);'",
        ),
        (
            "-- migrate:up\nSELECT 1;\n-- migrate:sideways\n",
            "0001_bad.sql line 3: unknown directive '-- migrate:sideways'"
            " (known: up, down, foreign_keys)",
        ),
        (
            "-- migrate:foreign_keys maybe\n-- migrate:up\n",
            "0001_bad.sql line 1: '-- migrate:foreign_keys' takes 'off' or 'on', not 'maybe'",
        ),
        (
            "-- migrate:up transaction:no\n",
            "0001_bad.sql line 1: option transaction takes true or false, not 'no'",
        ),
        (
            "-- migrate:up\nSELECT 1;\n\nINSERT INTO t VALUES ('unclosed;\n" + "x" * 100,
            "0001_bad.sql line 4: the up section ends inside this statement (an unclosed quote,"
            " comment or BEGIN ... END?): "
            + repr(("INSERT INTO t VALUES ('unclosed;\n" + "x" * 100)[:80]),
        ),
    ],
    ids=[
        "no-up", "second-up", "second-down", "down-first", "sql-before-up",
        "unknown-directive", "foreign-keys-value", "transaction-value", "unclosed-quote",
    ],
)
def test_a_malformed_sql_file_is_refused_with_a_text_naming_the_file_and_line(text, error):
    assert sql_error(text) == error


def test_a_sql_file_that_is_not_utf8_is_refused_when_loaded(folder):
    write(folder, "0001_latin1.sql", b"-- migrate:up\nINSERT INTO t VALUES ('caf\xe9');\n")
    (migration,) = Catalog(folder).migrations()

    with pytest.raises(SqlFileError) as caught:
        migration.load()
    assert str(caught.value) == (
        "0001_latin1.sql line 2: byte 40 is not valid UTF-8; save the file as UTF-8"
    )


# -- the catalog ------------------------------------------------------------------------------


def test_a_dbmate_folder_lists_in_version_order_with_its_timestamp_versions(folder, connection):
    write(folder, "20240102093000_add_email.sql",
          "-- migrate:up\nALTER TABLE users ADD COLUMN email TEXT;\n\n"
          "-- migrate:down\nALTER TABLE users DROP COLUMN email;\n")
    write(folder, "20240101120000_create_users.sql",
          "-- migrate:up\ncreate table users (\n  id integer,\n  name varchar(255)\n);\n\n"
          "-- migrate:down\ndrop table users;\n")

    migrations = Catalog(folder).migrations()

    assert [(m.version, m.name, m.kind) for m in migrations] == [
        (20240101120000, "create_users", "sql"),
        (20240102093000, "add_email", "sql"),
    ]
    for migration in migrations:
        run(connection, migration.load().up)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(users)")]
    assert columns == ["id", "name", "email"]


def test_python_and_sql_migrations_mix_in_one_catalog(folder, connection):
    write(folder, "0001_create.sql", "-- migrate:up\nCREATE TABLE t (x);\n")
    write(folder, "0002_fill.py", "def up(db):\n    db.execute('INSERT INTO t VALUES (2)')\n")
    write(folder, "0003_more.sql", "-- migrate:up\nINSERT INTO t VALUES (3);\n")
    write(folder, "0004_notes.txt", "not a migration")

    migrations = Catalog(folder).migrations()

    assert [(m.version, m.kind) for m in migrations] == [(1, "sql"), (2, "py"), (3, "sql")]
    for migration in migrations:
        run(connection, migration.load().up)
    assert connection.execute("SELECT x FROM t ORDER BY x").fetchall() == [(2,), (3,)]


def test_a_python_and_a_sql_file_with_one_version_are_a_duplicate_version(folder):
    write(folder, "0007_a.py", "def up(db):\n    pass\n")
    write(folder, "07_b.sql", "-- migrate:up\n")

    with pytest.raises(DuplicateVersion) as caught:
        Catalog(folder).migrations()
    assert caught.value.code == PRECONDITION_FAILED
    assert caught.value.text == "migration version 7 is defined twice: 0007_a.py and 07_b.sql"


@pytest.mark.parametrize("filename", ["0_start.sql", "0000_start.py"])
def test_version_zero_is_refused_naming_the_file(folder, filename):
    write(folder, "0001_ok.py", "def up(db):\n    pass\n")
    write(folder, filename, "")

    with pytest.raises(VersionZero) as caught:
        Catalog(folder).migrations()
    assert caught.value.code == PRECONDITION_FAILED
    assert caught.value.text == (
        f"migration file {filename} has version 0, below the smallest allowed 1"
    )


# -- checksums --------------------------------------------------------------------------------


def test_checksum_of_ignores_line_endings_and_trailing_whitespace_but_not_an_edit():
    unix = b"-- migrate:up\nCREATE TABLE t (x);\n"
    variants = [
        b"-- migrate:up\r\nCREATE TABLE t (x);\r\n",
        b"-- migrate:up\rCREATE TABLE t (x);\r",
        b"-- migrate:up  \nCREATE TABLE t (x);\t\n",
        b"-- migrate:up\nCREATE TABLE t (x);",
        b"-- migrate:up\nCREATE TABLE t (x);\n\n \n",
    ]

    assert checksum_of(unix).startswith("norm-sha256:")
    assert {checksum_of(variant) for variant in variants} == {checksum_of(unix)}
    assert checksum_of(b"-- migrate:up\nCREATE TABLE t (y);\n") != checksum_of(unix)
    assert checksum_of(b"-- migrate:up\n\nCREATE TABLE t (x);\n") != checksum_of(unix)
    assert checksum_of(b"  -- migrate:up\nCREATE TABLE t (x);\n") != checksum_of(unix)


def test_checksum_matches_accepts_a_raw_sha256_of_the_exact_bytes_and_refuses_it_after_an_edit():
    source = b"def up(db):\r\n    pass\r\n"
    old_row = hashlib.sha256(source).hexdigest()

    assert checksum_matches(old_row, source)
    assert not checksum_matches(old_row, source.replace(b"\r\n", b"\n"))  # the old rule: bytes
    assert not checksum_matches(old_row, b"def up(db):\r\n    raise\r\n")
    assert checksum_matches(checksum_of(source), source.replace(b"\r\n", b"\n"))
    assert not checksum_matches(checksum_of(source), b"def up(db):\n    raise\n")
    assert not checksum_matches("md5:whatever", source)


def test_load_records_the_normalized_checksum_of_the_bytes_it_read(folder):
    source = b"-- migrate:up\r\nCREATE TABLE t (x);\r\n"
    assert load(folder, "0001_t.sql", source).checksum == checksum_of(source)


def test_the_catalog_validates_unchanged_files_without_reading_them_again(folder, monkeypatch):
    paths = [
        write(folder, f"{n:04d}_t{n}.sql", f"-- migrate:up\nCREATE TABLE t{n} (x);\n")
        for n in (1, 2)
    ]
    for path in paths:
        os.utime(path, ns=(time_ns_ago(AN_HOUR_AGO_NS), time_ns_ago(AN_HOUR_AGO_NS)))
    catalog = Catalog(folder)
    recorded = {m.version: checksum_of(m.source()) for m in catalog.migrations()}
    reads: list[str] = []
    source = Migration.source
    monkeypatch.setattr(Migration, "source", lambda self: reads.append(self.path) or source(self))

    for _ in range(3):
        assert all(catalog.source_checksum_matches(m, recorded[m.version])
                   for m in catalog.migrations())
    assert len(reads) == 2  # once each, then from the cache

    # An edit of the same size, with the mtime put back to an old value, is still seen.
    paths[0].write_bytes(paths[0].read_bytes().replace(b"(x)", b"(y)"))
    os.utime(paths[0], ns=(time_ns_ago(2 * AN_HOUR_AGO_NS), time_ns_ago(2 * AN_HOUR_AGO_NS)))
    first, second = catalog.migrations()
    assert not catalog.source_checksum_matches(first, recorded[1])
    assert catalog.source_checksum_matches(second, recorded[2])
    assert len(reads) == 3


def test_a_freshly_written_file_is_read_again_on_every_check(folder, monkeypatch):
    write(folder, "0001_t.sql", "-- migrate:up\n")
    catalog = Catalog(folder)
    (migration,) = catalog.migrations()
    reads: list[str] = []
    source = Migration.source
    monkeypatch.setattr(Migration, "source", lambda self: reads.append(self.path) or source(self))

    recorded = checksum_of(b"-- migrate:up\n")
    assert catalog.source_checksum_matches(migration, recorded)
    assert catalog.source_checksum_matches(migration, recorded)
    assert len(reads) == 2  # its mtime is within the racy window: a same-tick edit could hide


def test_a_nul_character_in_a_sql_file_is_refused_naming_its_line(folder):
    with pytest.raises(SqlFileError, match=r"0001_a.sql line 2: a NUL character"):
        load(folder, "0001_a.sql", b"-- migrate:up\nSELECT '\x00';\n")
