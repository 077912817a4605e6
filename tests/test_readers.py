"""Other tools' migration files read unchanged (worker/readers/): golang-migrate's up and
down files, goose's and sql-migrate's annotations, Flyway's V and U files, beside dbmate's.

Real files in tmp_path, listed and loaded through the Catalog as the worker lists and loads
them, cut into statements by SQLite's rules and by PostgreSQL's; the down sections that
must revert as no-ops run against a real SQLite file, as the engine runs them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import PRECONDITION_FAILED, ReplyError
from tests.backends import Backend
from tests.sqlite_steps import run, tables
from worker import sql_file
from worker.catalog import (
    Catalog,
    DownWithoutUp,
    DuplicateVersion,
    Loaded,
    Migration,
    PairedMigration,
    VersionNotWhole,
    checksum_of,
    scan,
)
from worker.engine import Engine
from worker.lint.sources import sql_source
from worker.params import Params
from worker.readers import names, pick
from worker.readers.pick import Read
from worker.sql_file import SqlFileError
from worker.stores.postgres import sql as pg_sql

SPLITTERS = {"sqlite": sql_file.split_statements, "postgresql": pg_sql.split_statements}
AN_HOUR_AGO_NS = 3600 * 10**9  # older than the catalog's racy window

# A PostgreSQL function whose body holds `;` and a dollar quote inside its dollar quote.
PLPGSQL = (
    "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
    "BEGIN\n"
    "    EXECUTE $q$SELECT 1; SELECT 2$q$;\n"
    "    NEW.changed := now();\n"
    "    RETURN NEW;\n"
    "END\n"
    "$body$;\n"
)
# A SQLite trigger: `;` inside BEGIN ... END.
TRIGGER = (
    "CREATE TRIGGER audit AFTER INSERT ON t BEGIN\n"
    "    INSERT INTO log VALUES (NEW.x);\n"
    "END;\n"
)
BLOCKS = {"sqlite": TRIGGER, "postgresql": PLPGSQL}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    return folder


@pytest.fixture(params=sorted(SPLITTERS))
def dialect(request: pytest.FixtureRequest) -> str:
    """Each database's rules for cutting statements: "sqlite", then "postgresql"."""
    return request.param


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "test.db", isolation_level=None)
    yield connection
    connection.close()


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Write each file byte for byte (no newline translation)."""
    for filename, text in files.items():
        (folder / filename).write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def beside(folder: Path, name: str) -> Path:
    """Another, empty migrations folder next to `folder`."""
    other = folder.parent / name
    other.mkdir()
    return other


def only(folder: Path, dialect: str = "sqlite") -> Migration:
    (migration,) = Catalog(folder, split_statements=SPLITTERS[dialect]).migrations()
    return migration


def read(folder: Path, files: dict[str, str | bytes], dialect: str = "sqlite") -> Read:
    """What the reader of the one migration in `files` makes of it."""
    return only(write(folder, files), dialect).read_sql()[0]


def refusal(folder: Path, files: dict[str, str], dialect: str = "sqlite") -> str:
    with pytest.raises(SqlFileError) as caught:
        read(folder, files, dialect)
    return str(caught.value)


# -- names: which reader, which version, which files make one migration ---------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("20240101120000_create_users.up.sql",
         (names.GOLANG_MIGRATE, "up", "20240101120000", "create_users")),
        ("0002_add_email.down.sql", (names.GOLANG_MIGRATE, "down", "0002", "add_email")),
        ("V3__add_user_email.sql", (names.FLYWAY, "up", "3", "add_user_email")),
        ("U003__drop_it.sql", (names.FLYWAY, "down", "003", "drop_it")),
        ("V1.1__dotted.sql", (names.FLYWAY, "up", "1.1", "dotted")),
        ("V1_1__underscored.sql", (names.FLYWAY, "up", "1_1", "underscored")),
        ("4_any_format.sql", (names.SQL, "up", "4", "any_format")),
        ("5_code.py", (names.PYTHON, "up", "5", "code")),
        ("R__views.sql", None),  # a Flyway repeatable: no version, not a versioned file
        ("1_data.up.json", None),
        ("Vacuum__notes.sql", None),
        ("README.md", None),
    ],
)
def test_a_file_name_says_its_format_role_version_and_name(filename, expected):
    named = names.read_name(filename)
    assert (None if named is None else tuple(named)) == expected


def test_a_golang_migrate_pair_is_one_migration_and_an_up_alone_cannot_be_reverted(folder):
    write(folder, {
        "1_users.up.sql": "CREATE TABLE users (id INTEGER);\n",
        "1_users.down.sql": "DROP TABLE users;\n",
        "2_posts.up.sql": "CREATE TABLE posts (id INTEGER);\n",
        "R__views.sql": "CREATE VIEW v AS SELECT 1;\n",  # repeatable: not this catalog's
    })

    pair, alone = Catalog(folder).migrations()

    assert isinstance(pair, PairedMigration) and not isinstance(alone, PairedMigration)
    assert (pair.version, pair.name, pair.path, pair.down_path) == (
        1, "users", str(folder / "1_users.up.sql"), str(folder / "1_users.down.sql"))
    assert (alone.version, alone.name, alone.down_path) == (2, "posts", None)
    assert pair.load().down is not None
    loaded = alone.load()
    assert loaded.up is not None and loaded.down is None
    assert loaded.down_named == "down file 2_posts.down.sql"


def test_a_flyway_v_and_u_pair_is_one_migration_named_by_its_description(folder):
    write(folder, {
        "V1__create_users.sql": "CREATE TABLE users (id INTEGER);\n",
        "U1__drop_users.sql": "DROP TABLE users;\n",
        "V2__add_posts.sql": "CREATE TABLE posts (id INTEGER);\n",
    })

    pair, alone = Catalog(folder).migrations()

    assert (pair.version, pair.name, pair.down_path) == (
        1, "create_users", str(folder / "U1__drop_users.sql"))
    assert (alone.version, alone.name, alone.down_path) == (2, "add_posts", None)
    assert alone.load().down_named == "undo file U2__*.sql"
    assert pair.read_sql()[0].parsed.down == ["DROP TABLE users;"]


@pytest.mark.parametrize(
    ("files", "text"),
    [
        ({"3_orphan.down.sql": ""},
         "migration file 3_orphan.down.sql reverts version 3, but no 3_*.up.sql applies it"),
        ({"3_orphan.sql": "-- migrate:up\n", "3_orphan.down.sql": ""},
         "migration file 3_orphan.down.sql reverts version 3, but no 3_*.up.sql applies it"),
        ({"U7__undo.sql": "DROP TABLE t;\n"},
         "migration file U7__undo.sql reverts version 7, but no V7__*.sql applies it"),
        ({"7_up.up.sql": "", "U7__undo.sql": ""},
         "migration file U7__undo.sql reverts version 7, but no V7__*.sql applies it"),
    ],
    ids=["alone", "beside-a-dbmate-file", "undo-alone", "undo-beside-a-golang-migrate-up"],
)
def test_a_down_file_without_its_up_file_is_refused_naming_it(folder, files, text):
    write(folder, files)

    with pytest.raises(DownWithoutUp) as caught:
        Catalog(folder).migrations()

    assert caught.value.code == PRECONDITION_FAILED
    assert caught.value.text == text + ": add that file, or remove this one"


@pytest.mark.parametrize("filename", ["V1.1__dotted.sql", "V1_1__underscored.sql",
                                      "U2.0__undo.sql", "V1.2.3__three.sql"])
def test_a_dotted_flyway_version_is_refused_naming_the_file(folder, filename):
    write(folder, {filename: "SELECT 1;\n"})

    with pytest.raises(VersionNotWhole) as caught:
        Catalog(folder).migrations()

    assert caught.value.code == PRECONDITION_FAILED
    assert caught.value.text.startswith(f"migration file {filename} has version ")
    assert "versions are whole numbers here" in caught.value.text


@pytest.mark.parametrize(
    "files",
    [
        ["1_a.sql", "V1__b.sql"],
        ["1_a.up.sql", "01_b.py"],
        ["V2__a.sql", "2_b.up.sql"],
        ["3_a.up.sql", "3_a.down.sql", "3_b.down.sql"],
        ["V4__a.sql", "U4__a.sql", "U04__b.sql"],
    ],
    ids=["dbmate-flyway", "golang-migrate-python", "flyway-golang-migrate", "two-downs",
         "two-undos"],
)
def test_one_version_in_two_files_of_any_formats_is_a_duplicate(folder, files):
    write(folder, {filename: "-- a comment\n" for filename in files})

    with pytest.raises(DuplicateVersion) as caught:
        Catalog(folder).migrations()

    assert "is defined twice" in caught.value.text
    assert sum(filename in caught.value.text for filename in files) == 2


# -- markers: the format of NNNN_name.sql, and markers that contradict a name --------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-- migrate:up\nCREATE TABLE t (x);\n", "dbmate"),
        ("-- +goose Up\nCREATE TABLE t (x);\n", "goose"),
        ("-- +migrate Up\nCREATE TABLE t (x);\n", "sql-migrate"),
        ("-- a header; +goose and +migrate in prose are not markers\n-- migrate:up\n", "dbmate"),
    ],
)
def test_a_nnnn_name_file_is_read_by_the_format_its_markers_name(folder, text, expected):
    assert read(folder, {"0001_t.sql": text}).format == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- +goose Up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n",
         "0001_t.sql line 3: '-- migrate:down' is a dbmate marker, but line 1 holds a goose one"
         " ('-- +goose Up'): a file is in one format"),
        ("-- migrate:up\nSELECT 1;\n\n-- +migrate Down\n",
         "0001_t.sql line 4: '-- +migrate Down' is a sql-migrate marker, but line 1 holds a"
         " dbmate one ('-- migrate:up'): a file is in one format"),
        ("-- +migrate Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose StatementEnd\n",
         "0001_t.sql line 2: '-- +goose StatementBegin' is a goose marker, but line 1 holds a"
         " sql-migrate one ('-- +migrate Up'): a file is in one format"),
    ],
)
def test_markers_of_two_formats_in_one_file_are_refused_naming_the_file_and_line(
    folder, text, error
):
    assert refusal(folder, {"0001_t.sql": text}) == error


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"1_t.up.sql": "CREATE TABLE t (x);\n-- +goose Down\nDROP TABLE t;\n"},
         "1_t.up.sql line 2: '-- +goose Down' is a goose marker"),
        ({"1_t.up.sql": "SELECT 1;\n", "1_t.down.sql": "\n-- migrate:down\nDROP TABLE t;\n"},
         "1_t.down.sql line 2: '-- migrate:down' is a dbmate marker"),
        ({"V1__t.sql": "-- +migrate Up\nSELECT 1;\n"},
         "V1__t.sql line 1: '-- +migrate Up' is a sql-migrate marker"),
        ({"V1__t.sql": "SELECT 1;\n", "U1__t.sql": "SELECT 2;\n-- +goose StatementBegin\n"},
         "U1__t.sql line 2: '-- +goose StatementBegin' is a goose marker"),
    ],
    ids=["golang-migrate-up", "golang-migrate-down", "flyway-v", "flyway-u"],
)
def test_a_marker_in_a_file_named_as_plain_sql_is_refused_naming_the_file_and_line(
    folder, files, error
):
    text = refusal(folder, files)
    assert text.startswith(error + ", but the file is named as ")


def test_a_nnnn_name_file_without_any_marker_is_refused_naming_each_formats_up_marker(folder):
    assert refusal(folder, {"0001_plain.sql": "CREATE TABLE t (x);\n"}) == (
        "0001_plain.sql has no section marker, so it has nothing to apply: a file named"
        " NNNN_name.sql starts its up section with '-- migrate:up' (dbmate), '-- +goose Up'"
        " (goose), '-- +migrate Up' (sql-migrate); golang-migrate's files are named"
        " NNNN_name.up.sql"
    )


# -- goose ---------------------------------------------------------------------------------


def test_a_goose_block_runs_as_one_statement_exactly_as_written_and_the_rest_is_split(
    folder, dialect
):
    block = BLOCKS[dialect]
    text = (
        "-- +goose Up\n"
        "CREATE TABLE t (x INTEGER); CREATE TABLE log (x INTEGER);\n"
        "-- +goose StatementBegin\n" + block + "-- +goose StatementEnd\n"
        "INSERT INTO t VALUES (1)\n"
        "\n"
        "-- +goose Down\n"
        "DROP TABLE log;\nDROP TABLE t;\n"
    )

    parsed = read(folder, {"0001_t.sql": text}, dialect).parsed

    assert [s.strip() for s in parsed.up] == [
        "CREATE TABLE t (x INTEGER);", "CREATE TABLE log (x INTEGER);", block.strip(),
        "INSERT INTO t VALUES (1)"]
    assert block in parsed.up  # as written, its newline included
    assert [s.strip() for s in parsed.down or []] == ["DROP TABLE log;", "DROP TABLE t;"]
    assert (parsed.up_transaction, parsed.down_transaction) == (True, True)


def test_a_goose_block_holding_several_statements_is_still_one(folder):
    text = ("-- +goose Up\n-- +goose StatementBegin\n"
            "CREATE TABLE a (x int);\nCREATE TABLE b (x int);\n-- +goose StatementEnd\n")
    parsed = read(folder, {"0001_t.sql": text}, "postgresql").parsed
    assert parsed.up == ["CREATE TABLE a (x int);\nCREATE TABLE b (x int);\n"]


@pytest.mark.parametrize("where", ["top", "up", "down"])
def test_goose_no_transaction_anywhere_takes_both_sections_out_of_a_transaction(folder, where):
    marker = "-- +goose NO TRANSACTION\n"
    text = (
        (marker if where == "top" else "") + "-- +goose Up\n"
        + (marker if where == "up" else "") + "CREATE INDEX CONCURRENTLY i ON t (x);\n"
        "-- +goose Down\n" + (marker if where == "down" else "")
        + "DROP INDEX CONCURRENTLY i;\n"
    )
    loaded = only(write(folder, {"0001_t.sql": text}), "postgresql").load()
    assert (loaded.up_transaction, loaded.down_transaction) == (False, False)


def test_goose_annotations_are_matched_without_regard_to_case(folder):
    text = ("-- +goose up\n-- +goose statementbegin\nSELECT 1; SELECT 2;\n"
            "-- +goose STATEMENTEND\n--+goose no transaction\n-- +goose DOWN\n")
    parsed = read(folder, {"0001_t.sql": text}).parsed
    assert (parsed.up, parsed.down, parsed.up_transaction) == (
        ["SELECT 1; SELECT 2;\n"], [], False)


def test_goose_envsub_on_is_refused_as_not_supported_and_off_changes_nothing(folder):
    text = "-- +goose Up\n-- +goose ENVSUB ON\nCREATE TABLE ${TABLE} (x int);\n"
    assert refusal(folder, {"0001_t.sql": text}) == (
        "0001_t.sql line 2: '-- +goose ENVSUB ON' is not supported: environment variables are"
        " not substituted here, so that what runs is what was checksummed; write the values"
        " into the file"
    )
    off = "-- +goose Up\n-- +goose ENVSUB OFF\nCREATE TABLE t (x int);\n"
    assert read(beside(folder, "off"), {"0002_u.sql": off}).parsed.up == [
        "-- +goose ENVSUB OFF\nCREATE TABLE t (x int);"]  # an annotation is a comment


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- +goose Down\nSELECT 1;\n",
         "0001_bad.sql line 1: '-- +goose Down' comes before '-- +goose Up'"),
        ("-- +goose StatementBegin\nSELECT 1;\n-- +goose StatementEnd\n",
         "0001_bad.sql line 1: '-- +goose StatementBegin' before '-- +goose Up' belongs to no"
         " section"),
        ("-- +goose Up\nSELECT 1;\n-- +goose Up\n",
         "0001_bad.sql line 3: a second '-- +goose Up' (the first is on line 1)"),
        ("CREATE TABLE early (x);\n-- +goose Up\n",
         "0001_bad.sql line 1: SQL before '-- +goose Up' belongs to no section:"
         " 'CREATE TABLE early (x);'"),
        ("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n",
         "0001_bad.sql line 2: '-- +goose StatementBegin' has no '-- +goose StatementEnd'"
         " after it"),
        ("-- +goose Up\nSELECT 1;\n-- +goose StatementEnd\n",
         "0001_bad.sql line 3: '-- +goose StatementEnd' without a '-- +goose StatementBegin'"
         " before it"),
        ("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose StatementBegin\n",
         "0001_bad.sql line 4: a second '-- +goose StatementBegin' before the StatementEnd of"
         " the one on line 2"),
        ("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose Down\n",
         "0001_bad.sql line 4: '-- +goose Down' inside the StatementBegin block of line 2"),
        ("-- +goose Up\n-- +goose Sideways\n",
         "0001_bad.sql line 2: unknown goose annotation '-- +goose Sideways' (known: Up, Down,"
         " StatementBegin, StatementEnd, NO TRANSACTION, ENVSUB ON, ENVSUB OFF, each alone on"
         " its line)"),
        ("-- +goose Up -- creates t\n",
         "0001_bad.sql line 1: unknown goose annotation '-- +goose Up -- creates t' (known: Up,"
         " Down, StatementBegin, StatementEnd, NO TRANSACTION, ENVSUB ON, ENVSUB OFF, each"
         " alone on its line)"),
        ("-- +goose Up\n  -- +goose StatementBegin\n",
         "0001_bad.sql line 2: a goose annotation starts its line; this one is indented:"
         " '-- +goose StatementBegin'"),
        ("-- +goose Up\n-- +goose Down +goose Up\n",
         "0001_bad.sql line 2: two goose annotations on one line: '-- +goose Down +goose Up'"),
        ("-- +goose Up\nSELECT 1;\n", None),  # the control: nothing wrong
        ("-- +goose Up\nINSERT INTO t VALUES ('open;\n-- +goose StatementBegin\nSELECT 1;\n"
         "-- +goose StatementEnd\n",
         "0001_bad.sql line 2: the '-- +goose StatementBegin' on line 3 comes inside this"
         " statement (an unclosed quote, comment or parenthesis, or a missing ';'?):"
         " \"INSERT INTO t VALUES ('open;\""),
        ("-- +goose Up\nSELECT 1;\n\nSELECT 'open;\n-- +goose Down\n",
         "0001_bad.sql line 4: the up section ends inside this statement (an unclosed quote,"
         " comment or parenthesis, or a missing ';'?): \"SELECT 'open;\""),
        ("-- +goose NO TRANSACTION\n",
         "0001_bad.sql has no '-- +goose Up' line, so it has nothing to apply"),
    ],
    ids=["down-first", "block-before-up", "second-up", "sql-before-up", "unended-block",
         "end-without-begin", "second-begin", "down-in-block", "unknown", "trailing-comment",
         "indented", "two-on-a-line", "control", "unclosed-before-block",
         "unclosed-at-section-end", "no-up"],
)
def test_a_malformed_goose_file_is_refused_naming_the_file_and_line(folder, text, error):
    files = {"0001_bad.sql": text}
    if error is None:
        assert read(folder, files).parsed.up == ["SELECT 1;"]
    else:
        assert refusal(folder, files) == error


# -- sql-migrate -----------------------------------------------------------------------------


def test_a_sql_migrate_block_runs_as_one_statement_and_each_section_has_its_transaction(
    folder, dialect
):
    block = BLOCKS[dialect]
    text = (
        "-- +migrate Up\n"
        "CREATE TABLE t (x INTEGER);\nCREATE TABLE log (x INTEGER);\n"
        "-- +migrate StatementBegin\n" + block + "-- +migrate StatementEnd\n"
        "\n"
        "-- +migrate Down notransaction\n"
        "DROP TABLE log;\nDROP TABLE t\n"
    )

    parsed = read(folder, {"0001_t.sql": text}, dialect).parsed

    assert [s.strip() for s in parsed.up] == [
        "CREATE TABLE t (x INTEGER);", "CREATE TABLE log (x INTEGER);", block.strip()]
    assert block in parsed.up
    assert [s.strip() for s in parsed.down or []] == ["DROP TABLE log;", "DROP TABLE t"]
    assert (parsed.up_transaction, parsed.down_transaction) == (True, False)


def test_sql_migrate_sections_may_come_down_first(folder):
    text = "-- +migrate Down\nDROP TABLE t;\n\n-- +migrate Up notransaction\nVACUUM;\n"
    parsed = read(folder, {"0001_t.sql": text}).parsed
    assert (parsed.up, parsed.down) == (["VACUUM;"], ["DROP TABLE t;"])
    assert (parsed.up_transaction, parsed.down_transaction) == (False, True)
    start, end = parsed.up_span
    assert text[start:end] == "VACUUM;\n"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- +migrate Down\nSELECT 1;\n",
         "0001_bad.sql has no '-- +migrate Up' line, so it has nothing to apply"),
        ("-- +migrate Up\n-- +migrate Sideways\n",
         "0001_bad.sql line 2: unknown command '-- +migrate Sideways' (known: Up, Down,"
         " StatementBegin, StatementEnd)"),
        ("-- +migrate Up notransaction nocache\n",
         "0001_bad.sql line 1: unknown option 'nocache' after '-- +migrate Up' (known:"
         " notransaction)"),
        ("-- +migrate Up notransaction notransaction\n",
         "0001_bad.sql line 1: option notransaction is given twice"),
        ("--+migrate Up\n",
         "0001_bad.sql line 1: '--+migrate Up' is not a command as sql-migrate reads one:"
         " write '-- +migrate Up' (two dashes, one space)"),
        ("-- +migrate Up\n-- +migrate Down\n-- +migrate Up\n",
         "0001_bad.sql line 3: a second '-- +migrate Up' (the first is on line 1)"),
        ("-- +migrate StatementBegin\n-- +migrate Up\n",
         "0001_bad.sql line 1: '-- +migrate StatementBegin' before '-- +migrate Up' or"
         " '-- +migrate Down' belongs to no section"),
        ("SELECT 0;\n-- +migrate Down\n-- +migrate Up\n",
         "0001_bad.sql line 1: SQL before '-- +migrate Down' belongs to no section:"
         " 'SELECT 0;'"),
        ("-- +migrate Up\n-- +migrate StatementBegin\nSELECT 1;\n",
         "0001_bad.sql line 2: '-- +migrate StatementBegin' has no '-- +migrate StatementEnd'"
         " after it"),
        ("-- +migrate Up\n-- +migrate StatementEnd\n",
         "0001_bad.sql line 2: '-- +migrate StatementEnd' without a"
         " '-- +migrate StatementBegin' before it"),
        ("-- +migrate Up\n-- +migrate StatementBegin\n-- +migrate Down\n",
         "0001_bad.sql line 3: '-- +migrate Down' inside the StatementBegin block of line 2"),
        ("-- +migrate Up\n-- +migrate StatementBegin now\n",
         "0001_bad.sql line 2: '-- +migrate StatementBegin' takes no options"),
    ],
    ids=["no-up", "unknown-command", "unknown-option", "option-twice", "not-written-as-one",
         "second-up", "block-before-sections", "sql-before-first", "unended-block",
         "end-without-begin", "down-in-block", "block-option"],
)
def test_a_malformed_sql_migrate_file_is_refused_naming_the_file_and_line(folder, text, error):
    assert refusal(folder, {"0001_bad.sql": text}) == error


# -- golang-migrate and Flyway: plain SQL in two files --------------------------------------


def test_golang_migrate_files_split_by_the_databases_rules_and_may_lack_a_final_semicolon(
    folder, dialect
):
    block = BLOCKS[dialect]
    up = "-- header\nCREATE TABLE t (x INTEGER);\nCREATE TABLE log (x INTEGER);\n" + block + (
        "INSERT INTO t VALUES (1)")
    parsed = read(folder, {"1_t.up.sql": up, "1_t.down.sql": "DROP TABLE log;\nDROP TABLE t"},
                  dialect).parsed
    assert [s.strip() for s in parsed.up] == [
        "-- header\nCREATE TABLE t (x INTEGER);", "CREATE TABLE log (x INTEGER);",
        block.strip(), "INSERT INTO t VALUES (1)"]
    assert [s.strip() for s in parsed.down or []] == ["DROP TABLE log;", "DROP TABLE t"]
    assert (parsed.up_span, parsed.down_span) == ((0, len(up)), (0, len("DROP TABLE log;\n"
                                                                         "DROP TABLE t")))


def test_a_golang_migrate_file_wrapped_in_begin_and_commit_runs_in_the_migrations_transaction(
    folder, dialect
):
    up = "BEGIN;\nCREATE TABLE t (x INTEGER);\nINSERT INTO t VALUES (1);\nCOMMIT;\n"
    down = "start transaction;\n-- undo\nDROP TABLE t;\nend;"
    parsed = read(folder, {"1_t.up.sql": up, "1_t.down.sql": down}, dialect).parsed
    assert [s.strip() for s in parsed.up] == [
        "CREATE TABLE t (x INTEGER);", "INSERT INTO t VALUES (1);"]
    assert [s.strip() for s in parsed.down or []] == ["-- undo\nDROP TABLE t;"]
    assert (parsed.up_transaction, parsed.down_transaction) == (True, True)


def test_a_begin_without_its_commit_is_left_for_the_database_to_refuse(folder):
    parsed = read(folder, {"1_t.up.sql": "BEGIN;\nCREATE TABLE t (x int);\n"}).parsed
    assert [s.strip() for s in parsed.up] == ["BEGIN;", "CREATE TABLE t (x int);"]
    isolation = "BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;\n"
    assert len(read(beside(folder, "isolation"), {"2_t.up.sql": isolation},
                    "postgresql").parsed.up) == 3


@pytest.mark.parametrize(
    ("statements", "transaction"),
    [
        ("-- built without locking writes out\nCREATE INDEX CONCURRENTLY i ON t (x)", False),
        ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x);", False),
        ("DROP INDEX CONCURRENTLY IF EXISTS i;\n", False),
        ("REINDEX (VERBOSE) INDEX CONCURRENTLY i;", False),
        ("VACUUM (ANALYZE) t;\nVACUUM t2;", False),
        ("CREATE INDEX i ON t (x);", True),
        ("CREATE TABLE t2 (x int);\nCREATE INDEX CONCURRENTLY i ON t (x);", True),
        ("SELECT 'CREATE INDEX CONCURRENTLY';", True),
        ("-- only a comment\n", True),
    ],
    ids=["cic-with-comment", "unique-cic", "drop-concurrently", "reindex", "vacuums",
         "plain-index", "cic-among-others", "in-a-string", "comment-only"],
)
def test_a_plain_sql_file_runs_outside_a_transaction_only_when_all_its_statements_must(
    folder, statements, transaction
):
    golang = read(folder, {"1_i.up.sql": statements, "1_i.down.sql": statements},
                  "postgresql").parsed
    flyway = read(beside(folder, "flyway"), {"V2__i.sql": statements, "U2__i.sql": statements},
                  "postgresql").parsed
    assert (golang.up_transaction, golang.down_transaction) == (transaction, transaction)
    assert (flyway.up_transaction, flyway.down_transaction) == (transaction, transaction)


def test_a_flyway_placeholder_is_refused_naming_its_file_and_line(folder):
    files = {"V1__t.sql": "SELECT 1;\n", "U1__t.sql": "-- undo\nDROP TABLE ${schema}.t;\n"}
    assert refusal(folder, files) == (
        "U1__t.sql line 2: '${schema}' is a Flyway placeholder, and placeholders are not"
        " replaced here: write its value into the file"
    )


def test_a_plain_sql_file_ending_inside_a_statement_is_refused_naming_its_line(folder):
    files = {"1_t.up.sql": "SELECT 1;\n", "1_t.down.sql": "SELECT 1;\n\nSELECT 'open;\n"}
    assert refusal(folder, files).startswith(
        "1_t.down.sql line 3: the down section ends inside this statement")


# -- every format: an empty down reverts nothing and succeeds, no down cannot revert -------

EMPTY_DOWNS = {
    "dbmate": ({"0001_t.sql": "-- migrate:up\nCREATE TABLE t (x);\n-- migrate:down\n"},
               {"0001_t.sql": "-- migrate:up\nCREATE TABLE t (x);\n-- migrate:down\n"
                              "-- kept: see ADR 7\n"}),
    "goose": ({"0001_t.sql": "-- +goose Up\nCREATE TABLE t (x);\n-- +goose Down\n"},
              {"0001_t.sql": "-- +goose Up\nCREATE TABLE t (x);\n-- +goose Down\n"
                             "-- +goose StatementBegin\n-- nothing\n-- +goose StatementEnd\n"}),
    "sql-migrate": ({"0001_t.sql": "-- +migrate Up\nCREATE TABLE t (x);\n-- +migrate Down\n"},
                    {"0001_t.sql": "-- +migrate Up\nCREATE TABLE t (x);\n-- +migrate Down\n"
                                   "/* the table stays */\n;\n"}),
    "golang-migrate": ({"1_t.up.sql": "CREATE TABLE t (x);\n", "1_t.down.sql": ""},
                       {"1_t.up.sql": "CREATE TABLE t (x);\n",
                        "1_t.down.sql": "-- the table stays\n\n"}),
    "Flyway": ({"V1__t.sql": "CREATE TABLE t (x);\n", "U1__t.sql": ""},
               {"V1__t.sql": "CREATE TABLE t (x);\n", "U1__t.sql": "-- the table stays;\n"}),
}
NO_DOWNS = {
    "dbmate": ({"0001_t.sql": "-- migrate:up\nCREATE TABLE t (x int);\n"},
               "-- migrate:down section"),
    "goose": ({"0001_t.sql": "-- +goose Up\nCREATE TABLE t (x int);\n"},
              "-- +goose Down section"),
    "sql-migrate": ({"0001_t.sql": "-- +migrate Up\nCREATE TABLE t (x int);\n"},
                    "-- +migrate Down section"),
    "golang-migrate": ({"1_t.up.sql": "CREATE TABLE t (x int);\n"}, "down file 1_t.down.sql"),
    "Flyway": ({"V1__t.sql": "CREATE TABLE t (x int);\n"}, "undo file U1__*.sql"),
}


@pytest.mark.parametrize("format_name", sorted(EMPTY_DOWNS))
@pytest.mark.parametrize("shape", ["empty", "comments-only"])
def test_an_empty_or_comment_only_down_reverts_as_a_no_op_in_every_format(
    tmp_path, connection, format_name, shape
):
    folder = tmp_path / shape
    folder.mkdir()
    files = EMPTY_DOWNS[format_name][shape == "comments-only"]
    migration = only(write(folder, files))
    read_sql = migration.read_sql()[0]
    loaded = migration.load()

    assert read_sql.format == format_name
    assert read_sql.parsed.down == []
    run(connection, loaded.up)
    run(connection, loaded.down)
    assert tables(connection) == {"t"}


@pytest.mark.parametrize("format_name", sorted(NO_DOWNS))
def test_without_a_down_a_migration_of_any_format_cannot_be_rolled_back(
    tmp_path, backend: Backend, format_name
):
    folder = tmp_path / "migrations"
    folder.mkdir()
    files, down_named = NO_DOWNS[format_name]
    write(folder, files)
    store = backend.store()
    engine = Engine(store, Catalog(folder, split_statements=store.split_statements))

    assert engine.migrate(b"m1")["count"] == 1
    with pytest.raises(ReplyError) as caught:
        engine.rollback(b"r1", Params({}))

    assert caught.value.code == PRECONDITION_FAILED
    assert caught.value.text == f"migration 1 t has no {down_named}, so it cannot be rolled back"
    assert backend.tables() == {"t"}


# -- checksums: one rule for every format, a pair's covering both files ---------------------

CHECKSUMMED = {
    "goose": {"0001_t.sql": "-- +goose Up\nCREATE TABLE t (x);\n-- +goose Down\nDROP TABLE t;\n"},
    "sql-migrate": {"0001_t.sql": "-- +migrate Up\nCREATE TABLE t (x);\n"
                                  "-- +migrate Down\nDROP TABLE t;\n"},
    "golang-migrate": {"1_t.up.sql": "CREATE TABLE t (x);\n", "1_t.down.sql": "DROP TABLE t;\n"},
    "Flyway": {"V1__t.sql": "CREATE TABLE t (x);\n", "U1__t.sql": "DROP TABLE t;\n"},
}


def _checksum(folder: Path, files: dict[str, str | bytes]) -> str:
    folder.mkdir()
    migration = only(write(folder, files))
    loaded: Loaded = migration.load()
    assert loaded.checksum == checksum_of(migration.source())  # what validate compares with
    return loaded.checksum


@pytest.mark.parametrize("format_name", sorted(CHECKSUMMED))
def test_line_endings_and_trailing_whitespace_change_no_formats_checksum_and_an_edit_does(
    tmp_path, format_name
):
    files = CHECKSUMMED[format_name]
    unix = _checksum(tmp_path / "unix", files)
    windows = {name: text.replace("\n", "  \r\n") + "\r\n\t\r\n" for name, text in files.items()}
    edited = {name: text.replace("DROP TABLE t", "DROP TABLE u")  # in the down (file)
              for name, text in files.items()}

    assert _checksum(tmp_path / "windows", windows) == unix
    assert _checksum(tmp_path / "edited", edited) != unix


def test_a_pairs_checksum_covers_both_files_and_which_file_holds_a_line(tmp_path):
    pair = _checksum(tmp_path / "pair", {"1_t.up.sql": "CREATE TABLE t (x);\nSELECT 1;\n",
                                         "1_t.down.sql": "DROP TABLE t;\n"})
    moved = _checksum(tmp_path / "moved", {"1_t.up.sql": "CREATE TABLE t (x);\n",
                                           "1_t.down.sql": "SELECT 1;\nDROP TABLE t;\n"})
    up_alone = _checksum(tmp_path / "alone", {"1_t.up.sql": "CREATE TABLE t (x);\nSELECT 1;\n"})
    empty_down = _checksum(tmp_path / "empty", {"1_t.up.sql": "CREATE TABLE t (x);\nSELECT 1;\n",
                                                "1_t.down.sql": ""})

    assert len({pair, moved, up_alone, empty_down}) == 4
    assert up_alone == checksum_of(b"CREATE TABLE t (x);\nSELECT 1;\n")  # one file: as ever


def test_the_catalog_sees_an_edit_of_a_pairs_down_file_after_caching_its_verdict(folder):
    paths = [folder / "1_t.up.sql", folder / "1_t.down.sql"]
    write(folder, {"1_t.up.sql": "CREATE TABLE t (x);\n", "1_t.down.sql": "DROP TABLE t;\n"})
    long_ago = time.time_ns() - AN_HOUR_AGO_NS
    for path in paths:
        os.utime(path, ns=(long_ago, long_ago))
    catalog = Catalog(folder)
    (migration,) = catalog.migrations()
    recorded = checksum_of(migration.source())
    assert catalog.source_checksum_matches(migration, recorded)

    # Same size, mtime put back: only the down file's other stamps (ctime) tell.
    paths[1].write_text("DROP TABLE u;\n")
    os.utime(paths[1], ns=(long_ago, long_ago))
    assert not catalog.source_checksum_matches(migration, recorded)
    paths[1].unlink()
    with pytest.raises(FileNotFoundError):
        catalog.source_checksum_matches(migration, recorded)


def test_a_paired_migration_keeps_its_down_path_when_copied_or_replaced(folder):
    import copy
    import pickle

    write(folder, {"1_t.up.sql": "SELECT 1;\n", "1_t.down.sql": "SELECT 2;\n"})
    (pair,) = scan(folder)
    assert copy.copy(pair).down_path == pair.down_path
    assert pickle.loads(pickle.dumps(pair)).down_path == pair.down_path
    renamed = pair._replace(name="renamed")
    assert (renamed.name, renamed.down_path) == ("renamed", pair.down_path)


# -- lint reads each format's up statements at their lines ---------------------------------


@pytest.mark.parametrize(
    ("files", "lines"),
    [
        ({"0001_t.sql": "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE TABLE a (x int);\n"
                        "-- +goose StatementBegin\n" + PLPGSQL + "-- +goose StatementEnd\n"
                        "-- +goose Down\nDROP TABLE a;\n"}, [3, 5]),
        ({"0001_t.sql": "-- +migrate Down\nDROP TABLE a;\n-- +migrate Up\n\n"
                        "CREATE TABLE a (x int);\n"}, [5]),
        ({"1_t.up.sql": "-- header\n\nCREATE TABLE a (x int);\nSELECT 1",
          "1_t.down.sql": "DROP TABLE a;\n"}, [3, 4]),
        ({"V1__t.sql": "CREATE TABLE a (x int);\n\n\nCREATE INDEX CONCURRENTLY i ON a (x);\n",
          "U1__t.sql": "DROP TABLE a;\n"}, [1, 4]),
    ],
    ids=["goose", "sql-migrate", "golang-migrate", "flyway"],
)
def test_lint_reads_each_formats_up_statements_at_their_lines_in_the_up_file(
    folder, files, lines
):
    (migration,) = scan(write(folder, files), pg_sql.split_statements)
    source = sql_source(migration)
    assert [located.line for located in source.statements] == lines
    assert source.path == migration.path
    assert source.transactional is not files.get("0001_t.sql", "").startswith(
        "-- +goose NO TRANSACTION")


# -- any text: read, or refused as a malformed file -----------------------------------------

SQL_LINES = ["SELECT 1;", "SELECT 2", "SELECT 'a;", "b';", "$$ x; $$;", "/* c;", "*/", "BEGIN;",
             "COMMIT;", "CREATE INDEX CONCURRENTLY i ON t (x)", "", "\r", "${x}", "\ufeff",
             "-- +goose Up", "-- migrate:down", "  -- +goose StatementEnd", "--+migrate Up"]
MARKER_LINES = {  # each format's marker lines: its up marker first
    "dbmate": ["-- migrate:up", "-- migrate:down", "-- migrate:up transaction:false"],
    "goose": ["-- +goose Up", "-- +goose Down", "-- +goose StatementBegin",
              "-- +goose StatementEnd", "-- +goose NO TRANSACTION"],
    "sql-migrate": ["-- +migrate Up", "-- +migrate Down notransaction",
                    "-- +migrate StatementBegin", "-- +migrate StatementEnd"],
}


@st.composite
def files(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """The lines of a file, mostly of one format's markers and SQL, and a down file's."""
    markers = MARKER_LINES[draw(st.sampled_from(sorted(MARKER_LINES)))]
    line = st.one_of(st.sampled_from(markers), st.sampled_from(SQL_LINES), st.text(max_size=8))
    lines = draw(st.lists(line, max_size=14))
    if draw(st.booleans()):
        lines.insert(0, markers[0])
    return lines, draw(st.lists(st.sampled_from(SQL_LINES), max_size=6))


PATHS = [("/m/0001_t.sql", None), ("/m/1_t.up.sql", "/m/1_t.down.sql"),
         ("/m/V1__t.sql", "/m/U1__t.sql")]


@given(files(), st.sampled_from(sorted(SPLITTERS)))
def test_any_text_in_any_format_is_read_into_its_statements_in_order_or_refused(
    written: tuple[list[str], list[str]], dialect: str
) -> None:
    lines, down_lines = written
    source = "\n".join(lines).encode("utf-8", "surrogatepass")
    down_source = "\n".join(down_lines).encode("utf-8", "surrogatepass")
    for path, down_path in PATHS:
        down = None if down_path is None else (down_path, down_source)
        try:
            read = pick.read(path, source, down, SPLITTERS[dialect])
        except SqlFileError:
            continue
        start, end = read.parsed.up_span
        position = start
        for statement in read.parsed.up:  # each as written, in order, inside its section
            position = read.text.index(statement, position) + len(statement)
            assert position <= end
