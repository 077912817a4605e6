"""worker.stores.mariadb.statements: MySQL/MariaDB statements cut where the `mysql` client
cuts them, as written.

Pure text first: quotes and escapes, each kind of comment, version comments, stored
programs with and without DELIMITER lines, DELIMITER lines themselves, scripts that end
inside a statement, first_line, and properties over generated text. Last, one realistic
file run statement by statement on the MariaDB server at 127.0.0.1:3306 (skipped when no
server answers or PyMySQL is not installed).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from worker.sql_file import IncompleteStatement, SqlFileError, parse
from worker.stores.mariadb.statements import first_line, split_statements

MARIADB_HOST, MARIADB_PORT = "127.0.0.1", 3306
CANNOT_CONNECT = (2002, 2003)  # the client's CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR


def statements(script: str) -> list[str]:
    return list(split_statements(script))


def incomplete(script: str) -> IncompleteStatement:
    with pytest.raises(IncompleteStatement) as caught:
        statements(script)
    return caught.value


def cases(*rows: tuple[str, Any, Any]) -> Any:
    """pytest.mark.parametrize over (id, script, expected) rows: the id beside its case."""
    return pytest.mark.parametrize(
        ("script", "expected"), [row[1:] for row in rows], ids=[row[0] for row in rows]
    )


# -- quotes, escapes and comments ------------------------------------------------------------


@cases(
    (
        "doubled-quotes",
        "SELECT 'a;''b', \"c;\"\"d\";SELECT 2",
        ["SELECT 'a;''b', \"c;\"\"d\";", "SELECT 2"],
    ),
    (
        "backslash-escapes",
        "SELECT 'it\\'s; ok', \"\\\"; still\", 'x\\\\';SELECT 3;",
        ["SELECT 'it\\'s; ok', \"\\\"; still\", 'x\\\\';", "SELECT 3;"],
    ),
    (
        "backquoted-names-take-no-backslash-escape",
        "SELECT `a;``b` FROM `t\\`;SELECT 4;",
        ["SELECT `a;``b` FROM `t\\`;", "SELECT 4;"],
    ),
    ("hash-comment", "SELECT 1 # not the end;\n+ 1;#x\n", ["SELECT 1 # not the end;\n+ 1;"]),
    (
        "dash-dash-space-comment",
        "SELECT 1 -- not the end;\n+ 1;\nSELECT 2 --\t;\n;",
        ["SELECT 1 -- not the end;\n+ 1;", "\nSELECT 2 --\t;\n;"],
    ),
    (
        "dash-dash-at-end-of-line",
        "SELECT 1 --\n+ 1; SELECT 2 --",
        ["SELECT 1 --\n+ 1;", " SELECT 2 --"],
    ),
    ("dash-dash-x-is-code", "SELECT 1--1; SELECT 2;", ["SELECT 1--1;", " SELECT 2;"]),
    ("three-dashes-and-a-space", "SELECT 1 --- x;\n;", ["SELECT 1 --- x;\n;"]),
    (
        "block-comments-do-not-nest",
        "SELECT 1 /* a /* b; */ + 1; SELECT 2;",
        ["SELECT 1 /* a /* b; */ + 1;", " SELECT 2;"],
    ),
    (
        "quotes-inside-comments-are-comment",
        "SELECT 1 /* it's */ # don't\n-- isn't\n; SELECT 2;",
        ["SELECT 1 /* it's */ # don't\n-- isn't\n;", " SELECT 2;"],
    ),
    ("trailing-comment", "SELECT 1; -- the end; really\n/* and; this */", ["SELECT 1;"]),
    ("no-final-semicolon", "SELECT 1;\nSELECT 2", ["SELECT 1;", "\nSELECT 2"]),
    (
        "trailing-comment-without-newline",
        "SELECT 1;\nSELECT 2 # no newline; no ;",
        ["SELECT 1;", "\nSELECT 2 # no newline; no ;"],
    ),
    ("empty-statements", ";; SELECT 1;;\n;", [" SELECT 1;"]),
    ("only-comments", "-- only; a comment\n# another;\n/* and; another */ ; \n", []),
    ("empty", "", []),
)
def test_a_statement_ends_at_a_semicolon_in_code_and_is_yielded_as_written(
    script: str, expected: list[str]
) -> None:
    assert statements(script) == expected


# -- version comments ------------------------------------------------------------------------


@cases(
    (
        "mysqldump-set-names",
        "/*!40101 SET NAMES utf8mb4 */;\n/*!40014 SET FOREIGN_KEY_CHECKS=0 */;\n",
        ["/*!40101 SET NAMES utf8mb4 */;", "\n/*!40014 SET FOREIGN_KEY_CHECKS=0 */;"],
    ),
    (
        "mariadb-version-comments",
        "/*M!100100 SET @a = 1 */;/*M! SET @b = 2 */;",
        ["/*M!100100 SET @a = 1 */;", "/*M! SET @b = 2 */;"],
    ),
    ("no-version-number", "/*! SELECT 1 */;", ["/*! SELECT 1 */;"]),
    (
        "strings-inside",
        "/*!50001 SELECT ';' */; SELECT 2;",
        ["/*!50001 SELECT ';' */;", " SELECT 2;"],
    ),
    (
        "inside-a-statement",
        "CREATE TABLE t (a INT) /*!50100 ENGINE=InnoDB */;\nSELECT 2;",
        ["CREATE TABLE t (a INT) /*!50100 ENGINE=InnoDB */;", "\nSELECT 2;"],
    ),
    # The mysql client (MariaDB 10.11's, and MySQL 8's, which spares only /*+ hints */)
    # ends a statement at a delimiter inside a version comment; so does this module.
    (
        "a-semicolon-inside-ends-the-statement-as-in-the-client",
        "/*!40101 SET @a = 1; SET @b = 2 */;",
        ["/*!40101 SET @a = 1;", " SET @b = 2 */;"],
    ),
    (
        "a-plain-comment-that-looks-like-one",
        "/*M is not ! */ /* ! nor this; */ SELECT 1;",
        ["/*M is not ! */ /* ! nor this; */ SELECT 1;"],
    ),
)
def test_a_version_comments_contents_are_code(script: str, expected: list[str]) -> None:
    assert statements(script) == expected


# -- stored programs and compound statements without DELIMITER lines -------------------------

PROCEDURE = """\
CREATE DEFINER=`admin`@`%` PROCEDURE count_to(IN n INT)
    MODIFIES SQL DATA
    COMMENT 'counts; and keeps'
outer_block: BEGIN
    DECLARE i INT DEFAULT 0;
    DECLARE CONTINUE HANDLER FOR SQLSTATE '23000' BEGIN SET @dup = 1; END;
    counting: LOOP
        SET i = i + 1;
        IF i > n THEN LEAVE counting; END IF;
        WHILE @x < i DO SET @x = @x + 1; END WHILE;
        REPEAT SET @y = REPEAT('y', i); UNTIL 1 END REPEAT;
        CASE i WHEN 1 THEN SELECT 'one;'; ELSE BEGIN SELECT i; END; END CASE;
        SET @kind = CASE WHEN i > 2 THEN 'many' ELSE 'few' END;
        INSERT INTO t (a, `end`, t.begin) SELECT i, @end, IF(i > 1, 1, 0) FROM dual;
        DROP TEMPORARY TABLE IF EXISTS scratch;
    END LOOP counting;
END outer_block;"""
FUNCTION = """\
CREATE OR REPLACE FUNCTION IF NOT EXISTS doubled(x INT) RETURNS DECIMAL(10,2)
DETERMINISTIC
BEGIN
    DECLARE y INT DEFAULT IF(x > 0, x, 0);
    RETURN CASE WHEN y > 0 THEN y * 2 ELSE 0 END;
END;"""
TRIGGER = """\
CREATE TRIGGER stamp BEFORE INSERT ON t FOR EACH ROW FOLLOWS other
BEGIN
    IF NEW.a IS NULL THEN
        SET NEW.a = 1;
    ELSEIF NEW.a < 0 THEN
        SET NEW.a = 0;
    END IF;
END;"""
EVENT = """\
CREATE EVENT IF NOT EXISTS purge ON SCHEDULE EVERY 1 DAY ON COMPLETION PRESERVE ENABLE
DO BEGIN
    DELETE FROM log WHERE at < NOW() - INTERVAL 1 DAY;
    OPTIMIZE TABLE log;
END;"""
MYSQLDUMP_TRIGGER = """\
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t_bi BEFORE INSERT ON t
FOR EACH ROW BEGIN
  SET NEW.a = 1;
END */;"""


@cases(
    ("procedure", PROCEDURE + "\nSELECT 1;", [PROCEDURE, "\nSELECT 1;"]),
    ("function", FUNCTION + "\nSELECT doubled(2);", [FUNCTION, "\nSELECT doubled(2);"]),
    ("trigger", TRIGGER + "\nINSERT INTO t VALUES (1);", [TRIGGER, "\nINSERT INTO t VALUES (1);"]),
    ("event", EVENT + "\nSELECT 1;", [EVENT, "\nSELECT 1;"]),
    (
        "mysqldump-trigger-in-version-comments",
        MYSQLDUMP_TRIGGER + "\nSELECT 1;",
        [MYSQLDUMP_TRIGGER, "\nSELECT 1;"],
    ),
    (
        "definer-unquoted-and-current-user",
        "CREATE DEFINER = root@localhost PROCEDURE a() BEGIN SELECT 1; END;"
        "CREATE DEFINER=CURRENT_USER() PROCEDURE b() BEGIN SELECT 2; END;",
        [
            "CREATE DEFINER = root@localhost PROCEDURE a() BEGIN SELECT 1; END;",
            "CREATE DEFINER=CURRENT_USER() PROCEDURE b() BEGIN SELECT 2; END;",
        ],
    ),
    (
        "aggregate-function",
        "CREATE AGGREGATE FUNCTION total(x INT) RETURNS INT BEGIN DECLARE s INT DEFAULT 0;"
        " DECLARE CONTINUE HANDLER FOR NOT FOUND RETURN s;"
        " LOOP FETCH GROUP NEXT ROW; SET s = s + x; END LOOP; END;SELECT 1;",
        [
            "CREATE AGGREGATE FUNCTION total(x INT) RETURNS INT BEGIN DECLARE s INT DEFAULT 0;"
            " DECLARE CONTINUE HANDLER FOR NOT FOUND RETURN s;"
            " LOOP FETCH GROUP NEXT ROW; SET s = s + x; END LOOP; END;",
            "SELECT 1;",
        ],
    ),
    (
        "labelled-body-with-quoted-label",
        "CREATE PROCEDURE p() `main`: BEGIN SELECT 1; END `main`; SELECT 2;",
        ["CREATE PROCEDURE p() `main`: BEGIN SELECT 1; END `main`;", " SELECT 2;"],
    ),
    (
        "single-statement-trigger",
        "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 1;\nSELECT 1;",
        ["CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 1;", "\nSELECT 1;"],
    ),
    (
        "single-statement-function",
        "CREATE FUNCTION f(begin INT) RETURNS INT RETURN begin + 1;\nSELECT 1;",
        ["CREATE FUNCTION f(begin INT) RETURNS INT RETURN begin + 1;", "\nSELECT 1;"],
    ),
    (
        "single-statement-event-naming-a-column-begin",
        "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM log WHERE begin < NOW();"
        "SELECT 1;",
        [
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM log WHERE begin < NOW();",
            "SELECT 1;",
        ],
    ),
    (
        "single-statement-procedure",
        "CREATE PROCEDURE p() SELECT CASE WHEN 1 THEN 'a' END;\nSELECT 1;",
        ["CREATE PROCEDURE p() SELECT CASE WHEN 1 THEN 'a' END;", "\nSELECT 1;"],
    ),
    (
        "anonymous-compound",
        "BEGIN NOT ATOMIC\n  DECLARE x INT;\n  SET x = 1;\nEND;\nSELECT 1;",
        ["BEGIN NOT ATOMIC\n  DECLARE x INT;\n  SET x = 1;\nEND;", "\nSELECT 1;"],
    ),
    (
        "labelled-anonymous-compound",
        "top: BEGIN NOT ATOMIC SELECT 1; END top; SELECT 2;",
        ["top: BEGIN NOT ATOMIC SELECT 1; END top;", " SELECT 2;"],
    ),
    (
        "begin-transaction",
        "BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;\nBEGIN WORK;\nROLLBACK;",
        ["BEGIN;", "\nINSERT INTO t VALUES (1);", "\nCOMMIT;", "\nBEGIN WORK;", "\nROLLBACK;"],
    ),
    (
        "case-expression-in-a-select",
        "SELECT CASE WHEN a THEN 'x' END AS c FROM t; SELECT 2;",
        ["SELECT CASE WHEN a THEN 'x' END AS c FROM t;", " SELECT 2;"],
    ),
    (
        "tables-named-like-keywords",
        "CREATE TABLE event (begin INT, end INT);\nCREATE TABLE IF NOT EXISTS t (a INT);",
        ["CREATE TABLE event (begin INT, end INT);", "\nCREATE TABLE IF NOT EXISTS t (a INT);"],
    ),
    (
        "ddl-if-exists",
        "DROP PROCEDURE IF EXISTS p;\nDROP FUNCTION IF EXISTS f;",
        ["DROP PROCEDURE IF EXISTS p;", "\nDROP FUNCTION IF EXISTS f;"],
    ),
)
def test_a_semicolon_inside_a_stored_programs_begin_end_body_does_not_end_it(
    script: str, expected: list[str]
) -> None:
    assert statements(script) == expected


# -- DELIMITER lines -------------------------------------------------------------------------


@cases(
    (
        "dollars-and-back",
        "DELIMITER $$\nCREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\nEND$$\nDELIMITER ;\nCALL p();\n",
        ["CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\nEND", "CALL p();"],
    ),
    (
        "slashes",
        "delimiter //\nSELECT 1; SELECT 2 //\nSELECT '//' // SELECT 3\n",
        ["SELECT 1; SELECT 2 ", "\nSELECT '//' ", " SELECT 3\n"],
    ),
    (
        "double-semicolon-as-mysqldump",
        "DELIMITER ;;\n" + MYSQLDUMP_TRIGGER.replace("END */;", "END */;;") + "\nDELIMITER ;\n",
        [MYSQLDUMP_TRIGGER.removesuffix(";")],
    ),
    ("bar", "DELIMITER |\nSELECT 'a|b' | SELECT 2|", ["SELECT 'a|b' ", " SELECT 2"]),
    ("quoted-argument", "DELIMITER '$ $'\nSELECT 1$ $", ["SELECT 1"]),
    (
        "comments-and-blank-lines-before-it",
        "SELECT 1; -- done\n/* next:\n */\n\n  DELIMITER $$  \nSELECT 2$$",
        ["SELECT 1;", "SELECT 2"],
    ),
    ("the-rest-of-its-line-is-ignored", "DELIMITER $$ SELECT 1$$\nSELECT 2$$", ["SELECT 2"]),
    (
        "crlf-lines",
        "DELIMITER $$\r\nSELECT 1$$\r\nDELIMITER ;\r\nSELECT 2;",
        ["SELECT 1", "SELECT 2;"],
    ),
    ("a-delimiter-right-after-a-word", "DELIMITER $$\nSELECT a$$b", ["SELECT a", "b"]),
    ("a-lone-semicolon-is-no-statement", "DELIMITER $$\n;\n$$ ; $$", []),
    (
        "not-at-the-start-of-a-statement",
        "SELECT 1\nDELIMITER $$\n;",
        ["SELECT 1\nDELIMITER $$\n;"],
    ),
    (
        "not-at-the-start-of-a-line",
        "SELECT 1; DELIMITER $$\n; /* x */ DELIMITER $$\n;",
        ["SELECT 1;", " DELIMITER $$\n;", " /* x */ DELIMITER $$\n;"],
    ),
    ("a-word-that-only-begins-so", "DELIMITERS $$;", ["DELIMITERS $$;"]),
    ("without-an-argument-it-changes-nothing", "DELIMITER\nSELECT 1;", ["SELECT 1;"]),
    ("with-a-backslash-it-changes-nothing", "DELIMITER \\\\\nSELECT 1;", ["SELECT 1;"]),
    (
        "no-body-rule-under-another-delimiter",
        "DELIMITER $$\nCREATE PROCEDURE p() BEGIN SELECT 1",
        ["CREATE PROCEDURE p() BEGIN SELECT 1"],
    ),
)
def test_delimiter_lines_set_what_ends_a_statement_as_in_the_client(
    script: str, expected: list[str]
) -> None:
    assert statements(script) == expected


# -- a script that ends inside a statement ---------------------------------------------------


@cases(
    ("string", "SELECT 1; /* done */ SELECT 'it''s; open", "SELECT 'it"),
    ("escaped-quote", "SELECT 1; SELECT 'ends in an escape\\';", "SELECT 'ends"),
    ("double-quoted", 'SELECT 1; SELECT "open;', 'SELECT "open'),
    ("backquoted-name", "SELECT 1; SELECT `open;", "SELECT `open"),
    ("block-comment", "SELECT 1; /* open; */ /* still open; ", "/* still open"),
    ("version-comment", "SELECT 1;\n/*!50001 CREATE VIEW v AS SELECT 1", "/*!50001 CREATE"),
    ("procedure-body", "SELECT 1;\n  CREATE PROCEDURE p() BEGIN SELECT 1;", "CREATE PROCEDURE"),
    ("nested-block", "CREATE TRIGGER t AFTER DELETE ON x FOR EACH ROW BEGIN BEGIN END;", "CREATE"),
    ("anonymous-compound", "SELECT 1; BEGIN NOT ATOMIC SELECT 1; END IF;", "BEGIN NOT ATOMIC"),
    ("under-another-delimiter", "DELIMITER $$\nSELECT 1$$\nSELECT '$$", "SELECT '"),
)
def test_a_script_ending_inside_a_statement_raises_with_where_its_code_begins(
    script: str, expected: str
) -> None:
    error = incomplete(script)

    assert error.statement.startswith(expected)
    assert script[error.offset :] == error.statement


def test_a_section_ending_inside_a_body_is_a_parse_error_naming_the_line_its_statement_begins():
    text = "-- migrate:up\nCREATE TABLE t (a INT);\n\nCREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n"

    with pytest.raises(SqlFileError) as caught:
        parse(text, "0001_p.sql", split_statements)

    assert str(caught.value).startswith(
        "0001_p.sql line 4: the up section ends inside this statement"
        " (an unclosed quote, comment or BEGIN ... END?): 'CREATE PROCEDURE p()"
    )


def test_a_dbmate_file_of_mysql_parses_into_its_sections_statements() -> None:
    text = f"-- migrate:up\n{TRIGGER}\n-- migrate:down\nDROP TRIGGER stamp;\n"

    parsed = parse(text, "0001_stamp.sql", split_statements)

    assert parsed.up == [TRIGGER]
    assert parsed.down == ["DROP TRIGGER stamp;"]


# -- first_line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "line"),
    [
        ("\n\n  CREATE TABLE t (\n  a INT\n);", "CREATE TABLE t ("),
        ("-- why\n# and how\n/* more\n */ INSERT INTO t\nVALUES (1);", "INSERT INTO t"),
        ("\n/*!40101 SET NAMES utf8 */;", "/*!40101 SET NAMES utf8 */;"),
        ("--x\nSELECT 1", "--x"),
        ("SELECT '" + "a" * 100 + "';", "SELECT '" + "a" * 72),
        ("-- nothing but a comment", ""),
    ],
    ids=["blank-lines", "comments", "version-comment", "dash-dash-x", "long", "no-code"],
)
def test_first_line_is_the_first_line_of_code_cut_to_80_characters(
    statement: str, line: str
) -> None:
    assert first_line(statement) == line


# -- properties ------------------------------------------------------------------------------

# Whitespace, `;` and complete comments by MySQL's rules (a version comment is code).
NOISE = re.compile(
    r"(?:[ \t\n\r\f\v;]+|\#[^\n]*(?:\n|\Z)|--(?=[ \t\n\r\f\v]|\Z)[^\n]*(?:\n|\Z)"
    r"|/\*(?!M?!).*?\*/)*",
    re.DOTALL,
)
DELIMITER_COMMAND = re.compile(r"^[ \t\r\f\v]*delimiter(?![^ \t\n\r\f\v])", re.I | re.M)
SNIPPETS = [
    ";", ";", "\n", " ", "'", '"', "`", "\\", "#", "--", "-- ", "/*", "*/", "/*!", "/*M!50001",
    "$$", "DELIMITER $$\n", "\nDELIMITER ;\n", "delimiter //\n", "//", "CREATE PROCEDURE p() ",
    "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW ", "CREATE EVENT e ON SCHEDULE AT 1 DO ",
    "CREATE FUNCTION f() RETURNS INT ", "BEGIN", "BEGIN NOT ATOMIC", "END", "END IF", "CASE",
    "RETURN", "lbl:", "a", "t.end", "@end", "(", ")", "=", "DEFINER", "é",
]
ANY_TEXT = st.one_of(
    st.text(alphabet="ab; \n'\"`\\#-/*!M$()", max_size=40),
    st.lists(st.sampled_from(SNIPPETS), max_size=16).map("".join),
    st.text(max_size=40),
)


@given(ANY_TEXT)
def test_any_text_is_statements_found_in_order_or_an_incomplete_statement(script: str) -> None:
    try:
        found = statements(script)
    except IncompleteStatement as error:
        assert script[error.offset :] == error.statement
        return
    position = 0
    for statement in found:
        position = script.index(statement, position) + len(statement)
        assert first_line(statement)  # every statement yielded holds code


def _only_noise(text: str) -> bool:
    return NOISE.fullmatch(text) is not None


@given(ANY_TEXT)
def test_a_semicolon_script_is_its_statements_with_only_noise_between(script: str) -> None:
    assume(DELIMITER_COMMAND.search(script) is None)
    try:
        found = statements(script)
    except IncompleteStatement:
        return
    position = 0
    for statement in found:
        start = script.find(statement, position)
        while start != -1 and not _only_noise(script[position:start]):
            start = script.find(statement, start + 1)  # `0` may also stand in a comment
        assert start != -1, f"{statement!r} is not next, after only noise, at {position}"
        position = start + len(statement)
    assert _only_noise(script[position:])
    assert all(statement.endswith(";") for statement in found[:-1])


TEXT = st.text(alphabet="ab; ,\n'\"`\\-#*/()", max_size=12)


def _quoted(quote: str) -> st.SearchStrategy[str]:
    """A string or quoted name holding any of TEXT, its quotes doubled or (in a string)
    escaped, and its backslashes escaped."""
    def write(text: str) -> str:
        if quote != "`":
            text = text.replace("\\", "\\\\")
        return quote + text.replace(quote, quote * 2) + quote

    escaped = st.sampled_from(["\\'", '\\"', "\\\\", "\\n"]).map(lambda e: quote + e + quote)
    return st.one_of(TEXT.map(write), escaped) if quote != "`" else TEXT.map(write)


COMMENT = st.one_of(
    TEXT.map(lambda text: "# " + text.replace("\n", " ") + "\n"),
    TEXT.map(lambda text: "-- " + text.replace("\n", " ") + "\n"),
    TEXT.map(lambda text: "/*" + text.replace("*/", "") + "*/"),
)
WORD = st.sampled_from(["x", "1", "1--1", "- 1", "t.end", "@begin", "IF(1, 2, 3)", "é", "$a"])
# Code that holds no `;` outside quotes, comments and bodies, nor any of the words a
# body counts (BEGIN, CASE, END) unbalanced.
FRAGMENT = st.one_of(
    WORD,
    _quoted("'"),
    _quoted('"'),
    _quoted("`"),
    COMMENT,
    st.tuples(WORD, _quoted("'")).map(lambda parts: f"/*!50001 {parts[0]} {parts[1]} */"),
    st.just("CASE WHEN a THEN 'b;' ELSE c END"),
)


def _compound(opening: str) -> st.SearchStrategy[str]:
    """`opening`, then a BEGIN ... END body of nested blocks holding generated SELECTs."""
    def write(fragments: list[str]) -> str:
        inner = "; ".join(f"SELECT 1 {fragment}" for fragment in ["", *fragments])
        return (
            f"{opening} BEGIN IF a THEN {inner}; END IF; lbl: LOOP LEAVE lbl; END LOOP lbl;"
            f" CASE WHEN a THEN BEGIN {inner}; END; ELSE SET @x = REPEAT('x', 2); END CASE; END"
        )

    return st.lists(FRAGMENT, max_size=3).map(write)


STATEMENT = st.one_of(
    st.lists(FRAGMENT, max_size=6).map(lambda parts: " ".join(["SELECT", *parts])),
    _compound("CREATE PROCEDURE p()"),
    _compound("CREATE TRIGGER t AFTER INSERT ON x FOR EACH ROW"),
    _compound("lbl: BEGIN NOT ATOMIC SELECT 1;").map(lambda text: text + " END lbl"),
    st.sampled_from(["BEGIN", "BEGIN WORK", "DROP TABLE IF EXISTS t", "SET @end = 1"]),
)


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


@given(
    st.lists(st.lists(FRAGMENT, max_size=4), min_size=1, max_size=5),
    st.sampled_from(["$$", "//", ";;", "|"]),
    st.booleans(),
)
def test_statements_joined_by_another_delimiter_split_back_into_themselves_without_it(
    fragments: list[list[str]], delimiter: str, final_delimiter: bool
) -> None:
    # Each a `;`-joined run of SELECTs: under another delimiter, a `;` is text.
    written = ["; ".join(["SELECT 1", *parts]) for parts in fragments]
    assume(not any(delimiter in statement for statement in written))
    script = f"DELIMITER {delimiter}\n" + f"{delimiter}\n".join(written)
    script += f"{delimiter}\nDELIMITER ;\n" if final_delimiter else ""

    assert statements(script) == [written[0]] + ["\n" + statement for statement in written[1:]]


# -- on a MariaDB server ---------------------------------------------------------------------

ACCOUNTS_TABLE = """\
CREATE TABLE accounts (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(50) NOT NULL,
    balance DECIMAL(10, 2) NOT NULL DEFAULT 0,
    tier VARCHAR(20)
)"""
AUDIT_TABLE = "CREATE TABLE audit (n INT NOT NULL) /*!50100 COMMENT 'filled by fill_audit' */"
TIER_TRIGGER = """\
CREATE TRIGGER accounts_tier BEFORE INSERT ON accounts
FOR EACH ROW
BEGIN
    -- a comment; with a semicolon
    IF NEW.balance >= 1000 THEN
        SET NEW.tier = 'gold; plus';
    ELSEIF NEW.balance > 0 THEN
        SET NEW.tier = CASE WHEN NEW.name LIKE 'a%' THEN 'silver' ELSE 'bronze' END;
    ELSE
        SET NEW.tier = 'it\\'s none';
    END IF;
END"""
FILL_PROCEDURE = """\
CREATE PROCEDURE fill_audit(IN n INT)
MODIFIES SQL DATA
BEGIN
    DECLARE i INT DEFAULT 0;
    counting: LOOP
        SET i = i + 1;
        IF i > n THEN
            LEAVE counting;
        END IF;
        INSERT INTO audit (n) VALUES (i);
    END LOOP counting;
END"""
DOUBLED_FUNCTION = """\
CREATE FUNCTION doubled(x INT) RETURNS INT
DETERMINISTIC
BEGIN
    DECLARE result INT;
    SET result = x * 2;  # the work
    RETURN result;
END"""
INSERT_ACCOUNTS = (
    "INSERT INTO accounts (name, balance) VALUES ('alice', 5), ('bob', 2000), ('carol', 0)"
)
# (statement, whether it is a compound one that a DELIMITER line would guard)
SCHEMA = [
    (ACCOUNTS_TABLE, False),
    (AUDIT_TABLE, False),
    (TIER_TRIGGER, True),
    (FILL_PROCEDURE, True),
    (DOUBLED_FUNCTION, True),
    (INSERT_ACCOUNTS, False),
]


def written_with_delimiter_lines() -> str:
    parts = ["/*!40101 SET NAMES utf8mb4 */;\n"]
    for statement, compound in SCHEMA:
        if compound:
            parts.append(f"DELIMITER $$\n{statement}$$\nDELIMITER ;\n")
        else:
            parts.append(f"{statement};\n")
    return "\n".join(parts)


def written_without_delimiter_lines() -> str:
    return "/*!40101 SET NAMES utf8mb4 */;\n\n" + ";\n\n".join(s for s, _ in SCHEMA) + ";\n"


@pytest.fixture
def mariadb() -> Iterator[Any]:
    """A cursor (autocommit) in a database of its own on the MariaDB server, dropped after."""
    pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed")
    try:
        connection = pymysql.connect(
            host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="", database="test",
            autocommit=True, connect_timeout=5,
        )
    except pymysql.err.OperationalError as error:
        if error.args[0] not in CANNOT_CONNECT:
            raise  # a server answered: refusing the login is a failure, not a skip
        pytest.skip(f"no MariaDB server answers at {MARIADB_HOST}:{MARIADB_PORT}: {error}")
    database = f"mn_split_{secrets.token_hex(6)}"
    with contextlib.closing(connection), connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
        try:
            cursor.execute(f"USE {database}")
            yield cursor
        finally:
            cursor.execute(f"DROP DATABASE {database}")


@pytest.mark.parametrize(
    "script",
    [written_with_delimiter_lines(), written_without_delimiter_lines()],
    ids=["with-delimiter-lines", "without-delimiter-lines"],
)
def test_a_realistic_file_runs_statement_by_statement_on_mariadb(mariadb: Any, script: str):
    found = statements(script)
    for statement in found:
        mariadb.execute(statement)

    assert len(found) == 1 + len(SCHEMA)
    mariadb.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = DATABASE() ORDER BY table_name"
    )
    assert mariadb.fetchall() == (("accounts",), ("audit",))
    mariadb.execute("SELECT name, tier FROM accounts ORDER BY id")
    assert mariadb.fetchall() == (
        ("alice", "silver"), ("bob", "gold; plus"), ("carol", "it's none"),
    )
    mariadb.execute("CALL fill_audit(3)")
    mariadb.execute("SELECT n FROM audit ORDER BY n")
    assert mariadb.fetchall() == ((1,), (2,), (3,))
    mariadb.execute("SELECT doubled(21)")
    assert mariadb.fetchall() == ((42,),)
