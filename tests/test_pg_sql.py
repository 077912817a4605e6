"""pg_sql.split_statements: PostgreSQL's statements of a .sql migration, as written.

Pure text, no server: the cases psql gets right and sqlite3.complete_statement does not
(dollar quotes, E'' escapes, nested comments, BEGIN ATOMIC bodies, parentheses), the
errors that name the file and line, a property over generated statements, and the
Catalog handing the splitter down to the files it loads. Running the statements on a
real server is in tests/test_postgres_store.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import sql_file
from worker.catalog import Catalog
from worker.sql_file import IncompleteStatement, SqlFileError, parse
from worker.stores.postgres.sql import split_sql, split_statements

PLPGSQL_TRIGGER = (
    "CREATE FUNCTION stamp() RETURNS trigger AS $$\n"
    "BEGIN\n"
    "    NEW.changed := now(); -- a comment; in the body\n"
    "    RETURN NEW;\n"
    "END\n"
    "$$ LANGUAGE plpgsql;"
)
ATOMIC_BODY = (
    "CREATE FUNCTION sign_of(x int) RETURNS text LANGUAGE sql\n"
    "BEGIN ATOMIC\n"
    "    SELECT CASE WHEN x < 0 THEN 'minus; sign' ELSE 'plus' END;\n"
    "    SELECT CASE x WHEN 0 THEN 'zero' END;\n"
    "END;"
)


def statements(script: str) -> list[str]:
    return list(split_statements(script))


def incomplete(script: str) -> IncompleteStatement:
    with pytest.raises(IncompleteStatement) as caught:
        statements(script)
    return caught.value


class RecordingDb:
    """A migration's `db` that keeps what it is asked to execute."""

    def __init__(self) -> None:
        self.executed: list[str] = []

    def execute(self, sql: str, params: Any = ()) -> None:
        self.executed.append(sql)


# -- where statements end --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (PLPGSQL_TRIGGER + "\nSELECT 1;\n", [PLPGSQL_TRIGGER, "\nSELECT 1;"]),
        (
            "DO $do$ BEGIN PERFORM $$ a; b $$; END $do$; SELECT 2;",
            ["DO $do$ BEGIN PERFORM $$ a; b $$; END $do$;", " SELECT 2;"],
        ),
        (
            "INSERT INTO t VALUES ('a; b', 'it''s; ok');SELECT 2",
            ["INSERT INTO t VALUES ('a; b', 'it''s; ok');", "SELECT 2"],
        ),
        (
            "SELECT E'\\'; still \\\\', 'x\\';SELECT 3;",
            ["SELECT E'\\'; still \\\\', 'x\\';", "SELECT 3;"],
        ),
        ('SELECT "a;""b" FROM t; SELECT 4;', ['SELECT "a;""b" FROM t;', " SELECT 4;"]),
        (
            "SELECT 1 /* a; /* nested; */ still; */ + 1; SELECT 5;",
            ["SELECT 1 /* a; /* nested; */ still; */ + 1;", " SELECT 5;"],
        ),
        (
            "SELECT 1 -- not the end;\n+ 1;\nSELECT 6;",
            ["SELECT 1 -- not the end;\n+ 1;", "\nSELECT 6;"],
        ),
        (ATOMIC_BODY + "\nSELECT sign_of(1);", [ATOMIC_BODY, "\nSELECT sign_of(1);"]),
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); SELECT 7;",
            ["CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b);", " SELECT 7;"],
        ),
        ("SELECT $1, a$b; SELECT 8;", ["SELECT $1, a$b;", " SELECT 8;"]),
        ("SELECT 1; -- the end; really\n", ["SELECT 1;"]),
        ("SELECT 1;\n/* the end; /* really */ */\n\n", ["SELECT 1;"]),
        ("SELECT 1;\nSELECT 2", ["SELECT 1;", "\nSELECT 2"]),
        (
            "SELECT 1;\nSELECT 2 -- no newline; no ;",
            ["SELECT 1;", "\nSELECT 2 -- no newline; no ;"],
        ),
        (";; SELECT 1;;\n;", [" SELECT 1;"]),
        ("-- only; a comment\n/* and; another */ ; \n", []),
        ("", []),
    ],
    ids=[
        "plpgsql-body", "tag-holding-$$", "strings-and-doubled-quotes", "e-string-escapes",
        "quoted-names", "nested-block-comments", "line-comment", "begin-atomic-with-case",
        "rule-action-list", "parameter-and-dollar-in-name", "trailing-line-comment",
        "trailing-block-comment", "no-final-semicolon", "trailing-comment-without-newline",
        "empty-statements", "only-comments", "empty",
    ],
)
def test_a_statement_ends_at_a_semicolon_in_code_and_runs_exactly_as_written(
    script: str, expected: list[str]
) -> None:
    assert statements(script) == expected


def test_sqlite_rules_cut_a_plpgsql_body_that_postgresql_rules_keep_whole() -> None:
    assert len(list(sql_file.split_statements(PLPGSQL_TRIGGER))) > 1
    assert statements(PLPGSQL_TRIGGER) == [PLPGSQL_TRIGGER]


# -- a script that ends inside a statement ---------------------------------------------------


@pytest.mark.parametrize(
    ("script", "statement"),
    [
        ("SELECT 1;\n  CREATE FUNCTION f() AS $$ BEGIN RETURN 1; END;", "CREATE FUNCTION"),
        ("SELECT 1; SELECT $tag$ $$ ; $$ ;", "SELECT $tag$"),
        ("SELECT 1; /* done */ SELECT 'it''s; open", "SELECT 'it"),
        ("SELECT 1; SELECT E'ends in an escape\\';", "SELECT E'"),
        ('SELECT 1; SELECT "open;', 'SELECT "open'),
        ("SELECT 1; /* a /* nested */ still open; ", "/* a /* nested"),
        ("SELECT 1; SELECT (1;", "SELECT (1"),
        ("SELECT 1; CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1;", "CREATE"),
    ],
    ids=[
        "dollar-quote", "dollar-tag", "string", "e-string", "quoted-name", "block-comment",
        "parenthesis", "begin-atomic",
    ],
)
def test_a_script_ending_inside_a_statement_raises_with_where_its_code_begins(
    script: str, statement: str
) -> None:
    error = incomplete(script)

    assert error.statement.startswith(statement)
    assert script[error.offset :] == error.statement


def test_an_unclosed_dollar_quote_is_a_parse_error_naming_the_line_its_statement_begins() -> None:
    text = (
        "-- migrate:up\n"
        "SELECT 1;\n"
        "/* a /* nested; */\n comment; */\n"
        "CREATE FUNCTION one() RETURNS integer AS $$\n"
        "BEGIN RETURN 1; END;\n"
        "-- migrate:down\n"
        "DROP FUNCTION one();\n"
    )

    with pytest.raises(SqlFileError) as caught:
        parse(text, "0001_one.sql", split_statements)

    assert str(caught.value).startswith(
        "0001_one.sql line 5: the up section ends inside this statement"
        " (an unclosed quote, comment or BEGIN ... END?): 'CREATE FUNCTION one()"
    )


def test_a_file_of_plpgsql_parses_into_its_sections_statements() -> None:
    text = f"-- migrate:up\n{PLPGSQL_TRIGGER}\n-- migrate:down\nDROP FUNCTION stamp()"

    parsed = parse(text, "0001_stamp.sql", split_statements)

    assert parsed.up == [PLPGSQL_TRIGGER]
    assert parsed.down == ["DROP FUNCTION stamp()"]


# -- properties ------------------------------------------------------------------------------

TEXT = st.text(alphabet="ab; ,\n'\"-*/()", max_size=12)
BODY = st.text(alphabet="ab; ,\n'\"-*/()", max_size=12)  # no `$`: it cannot close $$


def _doubled(quote: str) -> st.SearchStrategy[str]:
    return TEXT.map(lambda text: quote + text.replace(quote, quote * 2) + quote)


def _escaped_text() -> st.SearchStrategy[str]:
    plain = st.text(alphabet="ab; \n\"", max_size=4)
    return st.lists(st.one_of(plain, st.sampled_from(["\\'", "\\\\", "''"]))).map(
        lambda parts: "E'" + "".join(parts) + "'"
    )


def _block_comment() -> st.SearchStrategy[str]:
    inner = st.text(alphabet="ab; \n'\"$-", max_size=8)
    return st.recursive(
        inner.map(lambda text: f"/*{text}*/"),
        lambda nested: st.tuples(inner, nested, inner).map(lambda p: f"/*{p[0]}{p[1]}{p[2]}*/"),
        max_leaves=3,
    )


WORD = st.sampled_from(["x", "a$b", "$1", "1.5", "+", "::", "BEGIN", "END", "CASE", "é"])
FRAGMENT = st.one_of(
    WORD,
    _doubled("'"),
    _doubled('"'),
    _escaped_text(),
    TEXT.map(lambda text: "--" + text.replace("\n", " ") + "\n"),
    _block_comment(),
    BODY.map(lambda body: f"$${body}$$"),
    BODY.map(lambda body: f"$fn$ {body} $$ ; $$ $fn$"),
    st.tuples(WORD, WORD).map(lambda words: f"({words[0]}; ({words[1]};))"),
    st.just("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC"
            " SELECT CASE WHEN true THEN 1 END; SELECT (2); END"),
)
STATEMENT = st.lists(FRAGMENT, max_size=6).map(lambda parts: " ".join(["SELECT", *parts]))


@given(st.lists(STATEMENT, min_size=1, max_size=5), st.booleans())
def test_statements_joined_by_semicolons_split_back_into_themselves(
    written: list[str], final_semicolon: bool
) -> None:
    script = ";\n".join(written) + (";\n-- the end;\n" if final_semicolon else "")
    expected = [written[0]] + ["\n" + statement for statement in written[1:]]
    expected = [statement + ";" for statement in expected[:-1]] + [
        expected[-1] + (";" if final_semicolon else "")
    ]

    assert statements(script) == expected


def _only_noise(text: str) -> bool:
    return all(
        piece.startswith(("--", "/*")) if not is_code else not piece.strip(" \t\n\r\f\v;")
        for is_code, piece in split_sql(text)
    )


@given(st.one_of(st.text(alphabet="ab;$ \n'\"E\\-*/()", max_size=40), st.text(max_size=40)))
def test_any_text_is_its_statements_and_noise_between_or_an_incomplete_statement(
    script: str,
) -> None:
    try:
        found = statements(script)
    except IncompleteStatement as error:
        assert script[error.offset :] == error.statement
        return
    position = 0
    for statement in found:
        start = script.index(statement, position)
        assert _only_noise(script[position:start])
        position = start + len(statement)
    assert _only_noise(script[position:])
    assert all(statement.endswith(";") for statement in found[:-1])


# -- the catalog hands the splitter down -----------------------------------------------------


def test_a_catalog_given_the_postgresql_splitter_loads_a_sql_file_by_its_rules(
    tmp_path: Path,
) -> None:
    (tmp_path / "0001_stamp.sql").write_text(
        f"-- migrate:up\n{PLPGSQL_TRIGGER}\n-- migrate:down\nDROP FUNCTION stamp();\n"
    )
    (migration,) = Catalog(tmp_path, split_statements=split_statements).migrations()
    (sqlite_rules,) = Catalog(tmp_path).migrations()
    db, sqlite_db = RecordingDb(), RecordingDb()

    loaded = migration.load()
    assert loaded.up is not None and loaded.down is not None
    loaded.up(db)
    loaded.down(db)
    up = sqlite_rules.load().up
    assert up is not None
    up(sqlite_db)

    assert db.executed == [PLPGSQL_TRIGGER, "DROP FUNCTION stamp();"]
    assert len(sqlite_db.executed) > 1  # the default keeps SQLite's rules
