"""Lint (worker/lint/): each rule on the statement it catches and on its safe recipe, the
ignore comment, lines, the dry run that lints Python migrations on a real PostgreSQL
server, and the `lint` command and request end to end through real processes.

The rule tests read .sql files written into tmp_path, as the worker reads them; the tables
they alter (users, posts) exist before the linted set, as a running application's do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker import sql_file
from worker.catalog import Catalog, scan
from worker.engine import Engine
from worker.params import Params
from worker.stores.postgres import sql as pg_sql

pytest.importorskip("pglast", reason="pglast is not installed (pip install .[test])")

from worker.lint import parser
from worker.lint.recording import Recorder, runnable
from worker.lint.rules import RULES
from worker.lint.runner import INVALID_IGNORE, UNPARSABLE, lint_migrations
from worker.lint.sources import Located

UP = "-- migrate:up\n"
UP_OUTSIDE = "-- migrate:up transaction:false\n"


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def findings(folder: Path) -> list[tuple[str, str, int]]:
    """(rule, file name, line) of each finding of the .sql migrations in `folder`."""
    found, unreadable = lint_migrations(scan(folder, pg_sql.split_statements), Recorder())
    assert not unreadable
    return [(f["rule"], Path(f["file"]).name, f["line"]) for f in found]


def rules_of(folder: Path) -> set[str]:
    return {rule for rule, _, _ in findings(folder)}


# -- each rule: what it catches, and the safe recipe that passes ---------------------------

CASES = {
    "require-concurrent-index-creation": (
        {"0001_i.sql": UP + "CREATE INDEX users_email ON users (email);\n"},
        {"0001_i.sql": UP_OUTSIDE
         + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);\n"},
    ),
    "require-concurrent-index-deletion": (
        {"0001_d.sql": UP + "DROP INDEX users_email;\n"},
        {"0001_d.sql": UP_OUTSIDE + "DROP INDEX CONCURRENTLY IF EXISTS users_email;\n"},
    ),
    "concurrently-in-transaction": (
        {"0001_i.sql": UP + "CREATE INDEX CONCURRENTLY users_email ON users (email);\n"},
        {"0001_i.sql": UP_OUTSIDE + "CREATE INDEX CONCURRENTLY users_email ON users (email);\n"},
    ),
    "adding-foreign-key-constraint": (
        {"0001_fk.sql": UP + "ALTER TABLE posts ADD CONSTRAINT posts_user FOREIGN KEY (user_id)"
                             " REFERENCES users (id);\n"},
        {"0001_fk.sql": UP + "ALTER TABLE posts ADD CONSTRAINT posts_user FOREIGN KEY (user_id)"
                             " REFERENCES users (id) NOT VALID;\n",
         "0002_validate.sql": UP + "ALTER TABLE posts VALIDATE CONSTRAINT posts_user;\n"},
    ),
    "adding-check-constraint": (
        {"0001_c.sql": UP + "ALTER TABLE users ADD CONSTRAINT adult CHECK (age >= 18);\n"},
        {"0001_c.sql": UP + "ALTER TABLE users ADD CONSTRAINT adult CHECK (age >= 18) NOT VALID;\n",
         "0002_v.sql": UP + "ALTER TABLE users VALIDATE CONSTRAINT adult;\n"},
    ),
    "setting-not-null": (
        {"0001_n.sql": UP + "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n"},
        {"0001_c.sql": UP + "ALTER TABLE users ADD CONSTRAINT email_set"
                            " CHECK (email IS NOT NULL) NOT VALID;\n",
         "0002_v.sql": UP + "ALTER TABLE users VALIDATE CONSTRAINT email_set;\n",
         "0003_n.sql": UP + "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n"},
    ),
    "adding-field-with-volatile-default": (
        {"0001_a.sql": UP + "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();\n"},
        {"0001_a.sql": UP + "ALTER TABLE users ADD COLUMN seen timestamptz DEFAULT now();\n"},
    ),
    "adding-required-field": (
        {"0001_a.sql": UP + "ALTER TABLE users ADD COLUMN age int NOT NULL;\n"},
        {"0001_a.sql": UP + "ALTER TABLE users ADD COLUMN age int NOT NULL DEFAULT 0;\n"},
    ),
    "changing-column-type": (
        {"0001_t.sql": UP + "ALTER TABLE users ALTER COLUMN email TYPE varchar(320);\n"},
        {"0001_t.sql": UP + "ALTER TABLE users ADD COLUMN email_v2 varchar(320);\n"},
    ),
    "renaming-column": (
        {"0001_r.sql": UP + "ALTER TABLE users RENAME COLUMN email TO mail;\n"},
        {"0001_r.sql": UP + "CREATE TABLE drafts (id bigint, body text);\n"
                            "ALTER TABLE drafts RENAME COLUMN body TO text;\n"},
    ),
    "renaming-table": (
        {"0001_r.sql": UP + "ALTER TABLE users RENAME TO accounts;\n"},
        {"0001_c.sql": UP + "CREATE TABLE drafts (id bigint);\n",
         "0002_r.sql": UP + "ALTER TABLE drafts RENAME TO sketches;\n"},
    ),
    "dropping-column": (
        {"0001_d.sql": UP + "ALTER TABLE users DROP COLUMN email;\n"},
        {"0001_c.sql": UP + "CREATE TABLE drafts (id bigint, body text);\n",
         "0002_d.sql": UP + "ALTER TABLE drafts DROP COLUMN body;\n"},
    ),
    "dropping-table": (
        {"0001_d.sql": UP + "DROP TABLE posts;\n"},
        {"0001_d.sql": UP + "CREATE TABLE scratch (id bigint);\nDROP TABLE scratch;\n"},
    ),
    "disallowed-unique-constraint": (
        {"0001_u.sql": UP + "ALTER TABLE users ADD CONSTRAINT users_email UNIQUE (email);\n"},
        {"0001_i.sql": UP_OUTSIDE + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_i"
                                    " ON users (email);\n",
         "0002_u.sql": UP + "ALTER TABLE users ADD CONSTRAINT users_email"
                            " UNIQUE USING INDEX users_email_i;\n"},
    ),
    "exclusive-lock-while-updating": (
        {"0001_b.sql": UP + "ALTER TABLE users ADD COLUMN score int;\n"
                            "UPDATE users SET score = 0;\n"},
        {"0001_b.sql": UP + "SET LOCAL lock_timeout = '2s';\n"
                            "ALTER TABLE users ADD COLUMN score int;\n"
                            "UPDATE users SET score = 0;\n"},
    ),
}


def test_every_rule_has_a_case_here_and_lives_in_the_file_named_as_its_id() -> None:
    assert set(CASES) == set(RULES)
    folder = Path(sys.modules["worker.lint.rules"].__file__).parent
    for rule_id in RULES:
        assert (folder / f"{rule_id.replace('-', '_')}.py").is_file()


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_each_rule_catches_its_statement_and_passes_its_safe_recipe(
    tmp_path: Path, rule_id: str
) -> None:
    dangerous, safe = CASES[rule_id]
    assert rule_id in rules_of(write(tmp_path / "dangerous", dangerous))
    assert rule_id not in rules_of(write(tmp_path / "safe", safe))


def test_each_finding_says_why_and_the_fix_with_the_five_keys(tmp_path: Path) -> None:
    folder = write(tmp_path, {"0007_i.sql": UP + "CREATE INDEX users_email ON users (email);\n"})
    (finding,), _ = lint_migrations(scan(folder, pg_sql.split_statements), Recorder())
    rule = RULES["require-concurrent-index-creation"]
    assert finding == {
        "rule": rule.id, "file": str(folder / "0007_i.sql"), "line": 2, "why": rule.why,
        "fix": rule.fix, "version": 7,
        "statement": "CREATE INDEX users_email ON users (email);",
    }


def test_a_folder_that_follows_the_safe_recipes_gets_no_finding(tmp_path: Path) -> None:
    folder = write(tmp_path, {
        "0001_email_index.sql": UP_OUTSIDE
        + "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email);\n",
        "0002_posts_user.sql": UP + "ALTER TABLE posts ADD CONSTRAINT posts_user"
        " FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\n"
        "-- migrate:down\nALTER TABLE posts DROP CONSTRAINT posts_user;\n",
        "0003_validate.sql": UP + "ALTER TABLE posts VALIDATE CONSTRAINT posts_user;\n",
        "0004_audit.sql": UP + "CREATE TABLE audit (id bigint PRIMARY KEY, what text NOT NULL);\n"
        "CREATE INDEX audit_what ON audit (what);\n",
    })
    assert findings(folder) == []


def test_an_index_on_a_table_created_earlier_in_the_same_migration_is_fine(tmp_path: Path) -> None:
    folder = write(tmp_path, {"0001_t.sql": UP + "CREATE TABLE tags (id bigint, name text);\n"
                                                 "CREATE INDEX tags_name ON tags (name);\n"})
    assert findings(folder) == []


# -- lines and the ignore comment ----------------------------------------------------------


def test_a_finding_names_the_line_where_its_statement_begins(tmp_path: Path) -> None:
    folder = write(tmp_path, {"0001_two.sql": (
        "-- a header\n"                                     # 1
        "-- migrate:up\n"                                   # 2
        "CREATE TABLE tags (id bigint);\n"                  # 3
        "\n"                                                # 4
        "/* a comment; with a semicolon */\n"               # 5
        "ALTER TABLE users\n"                               # 6
        "    ALTER COLUMN email TYPE text;  DROP TABLE posts;\n"  # 7
        "-- migrate:down\n"
        "DROP TABLE users;\n"
    )})
    assert findings(folder) == [
        ("changing-column-type", "0001_two.sql", 6),
        ("dropping-table", "0001_two.sql", 7),
    ]


def test_the_ignore_comment_silences_exactly_the_named_rule_on_the_next_statement(
    tmp_path: Path
) -> None:
    folder = write(tmp_path, {"0001_i.sql": (
        UP                                                                  # 1
        + "-- lint:ignore adding-required-field the table is empty in every deployment\n"  # 2
        + "ALTER TABLE users ADD COLUMN age int NOT NULL, ALTER COLUMN email TYPE text;\n"  # 3
        + "ALTER TABLE users ADD COLUMN rank int NOT NULL;\n"             # 4
    )})
    assert findings(folder) == [
        ("changing-column-type", "0001_i.sql", 3),
        ("adding-required-field", "0001_i.sql", 4),
    ]


def test_an_ignore_may_name_several_rules(tmp_path: Path) -> None:
    folder = write(tmp_path, {"0001_i.sql": (
        UP + "-- lint:ignore adding-required-field,changing-column-type checked with the team\n"
        "ALTER TABLE users ADD COLUMN age int NOT NULL, ALTER COLUMN email TYPE text;\n"
    )})
    assert findings(folder) == []


@pytest.mark.parametrize("comment", [
    "-- lint:ignore dropping-table",
    "-- lint:ignore",
    "-- lint:ignore droping-table a typo in the id",
])
def test_an_ignore_without_reason_or_known_rule_silences_nothing_and_is_reported(
    tmp_path: Path, comment: str
) -> None:
    folder = write(tmp_path, {"0001_d.sql": UP + comment + "\nDROP TABLE posts;\n"})
    assert findings(folder) == [
        (INVALID_IGNORE, "0001_d.sql", 2),
        ("dropping-table", "0001_d.sql", 3),
    ]


def test_a_statement_the_parser_refuses_is_a_finding_naming_its_file_and_line(
    tmp_path: Path
) -> None:
    folder = write(tmp_path, {"0001_bad.sql": (
        UP + "CREATE TABLE t (id int);\nALTER TABLE users\n  ADD COLUMN x intt nott;\n")})
    (finding,), _ = lint_migrations(scan(folder, pg_sql.split_statements), Recorder())
    assert (finding["rule"], finding["line"]) == (UNPARSABLE, 4)  # the line of the error
    assert "syntax error" in finding["why"] and parser.version() in finding["why"]
    ignored = write(tmp_path / "ignored", {"0001_bad.sql": UP + f"-- lint:ignore {UNPARSABLE}"
                                           " PostgreSQL 19 syntax\nALTER TABLE users nott;\n"})
    assert findings(ignored) == []


def test_statements_at_gives_where_each_statement_s_code_begins() -> None:
    script = "-- c\nSELECT 1;\n\n /* x; */ SELECT 'a;b';\n;  \n"
    located = list(pg_sql.statements_at(script))
    assert [statement for _, statement in located] == list(pg_sql.split_statements(script))
    assert [script[offset:offset + 8] for offset, _ in located] == ["SELECT 1", "SELECT '"]


def test_a_sql_file_says_where_its_sections_are() -> None:
    text = "-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;\n"
    parsed = sql_file.parse(text, "0001_t.sql", pg_sql.split_statements)
    up_start, up_end = parsed.up_span
    down_start, down_end = parsed.down_span
    assert text[up_start:up_end] == "CREATE TABLE t (id int);\n"
    assert text[down_start:down_end] == "DROP TABLE t;\n"
    no_down = sql_file.parse("-- migrate:up\nSELECT 1", "0002_x.sql", pg_sql.split_statements)
    assert no_down.down_span == (0, 0)


def test_placeholders_of_a_statement_run_with_parameters_are_parsed_as_postgresql_s() -> None:
    assert (Located(1, "UPDATE t SET a = ? WHERE b = ? AND c = '?'", named=False).parseable()
            == "UPDATE t SET a = $1 WHERE b = $2 AND c = '?'")
    assert (Located(1, "UPDATE t SET a = :x WHERE b = :y::int OR a = :x", named=True).parseable()
            == "UPDATE t SET a = $1 WHERE b = $2::int OR a = $1")


def test_the_dry_run_executes_concurrently_statements_without_concurrently() -> None:
    assert runnable("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)") == (
        "CREATE INDEX IF NOT EXISTS i ON t (a)")
    assert runnable("SELECT 1; DROP INDEX CONCURRENTLY i") == "SELECT 1;\nDROP INDEX i"
    assert runnable("SELECT 'concurrently'") == "SELECT 'concurrently'"


# -- through the engine: SQLite, and Python migrations on a real PostgreSQL server ----------


def test_on_sqlite_lint_lints_nothing_and_says_why(tmp_path: Path) -> None:
    from worker.stores.sqlite.store import SqliteStore

    folder = write(tmp_path / "m", {"0001_d.sql": UP + "DROP TABLE posts;\n"})
    store = SqliteStore(tmp_path / "db.sqlite")
    try:
        reply = Engine(store, Catalog(folder)).lint(b"r1", Params({}))
    finally:
        store.close()
    assert reply["ok"] is True and reply["findings"] == []
    assert "PostgreSQL's" in reply["note"] and "SQLite" in reply["note"]


@pytest.fixture
def pg(pg_database: str, tmp_path: Path):
    """(an engine on a schema of its own in the module's database, its backend, its folder)."""
    from tests.backends import PostgresBackend

    backend = PostgresBackend(pg_database)
    backend.query(f"CREATE SCHEMA {backend.schema}")
    backend.query("CREATE TABLE users (id bigint PRIMARY KEY, email text)")
    backend.query("INSERT INTO users VALUES (1, 'a@example.com')")
    folder = tmp_path / "migrations"
    folder.mkdir()
    engine = Engine(backend.store(), Catalog(folder, split_statements=pg_sql.split_statements))
    try:
        yield engine, backend, folder
    finally:
        backend.close()


PY_MIGRATION = '''\
def up(db):
    db.execute("CREATE TABLE notes (id bigint, body text)")
    db.execute("CREATE INDEX notes_body ON notes (body)")
    for column in ("email",):
        db.execute(
            f"CREATE INDEX users_{column} ON users ({column})"
        )
    # lint:ignore changing-column-type the table holds a handful of rows
    db.execute("ALTER TABLE users ALTER COLUMN email TYPE varchar(320)")
    db.execute("UPDATE users SET email = lower(email) WHERE id = ?", (1,))
    db.executescript("ALTER TABLE users ADD COLUMN age int NOT NULL; SELECT 1")
'''


def test_a_python_migration_is_linted_by_what_its_dry_run_executes_and_leaves_nothing(pg) -> None:
    engine, backend, folder = pg
    (folder / "0001_sql.sql").write_text(UP + "ALTER TABLE users ADD COLUMN nick text;\n")
    (folder / "0002_py.py").write_text(PY_MIGRATION)
    before = backend.snapshot()
    reply = engine.lint(b"r1", Params({}))
    found = [(f["rule"], Path(f["file"]).name, f["line"]) for f in reply["findings"]]
    assert found == [
        ("require-concurrent-index-creation", "0002_py.py", 5),
        ("exclusive-lock-while-updating", "0002_py.py", 10),
        ("adding-required-field", "0002_py.py", 11),
    ]
    assert reply["findings"][0]["statement"] == "CREATE INDEX users_email ON users (email)"
    # The dry run failed at its last statement (a NOT NULL column on a table with a row):
    # what it executed before is linted, and the reply says the rest was not.
    assert reply["linted"] == [{"version": 1, "name": "sql"}]
    (not_linted,) = reply["not_linted"]
    assert not_linted["version"] == 2 and "NotNullViolation" in not_linted["reason"]
    assert reply["ok"] is False
    assert backend.snapshot() == before
    assert backend.query("SELECT column_name FROM information_schema.columns"
                         " WHERE table_schema = %s AND table_name = 'users' ORDER BY 1",
                         (backend.schema,)) == [("email",), ("id",)]
    assert backend.query("SELECT id, email FROM users") == [(1, "a@example.com")]


def test_a_concurrent_index_outside_a_transaction_lets_the_dry_run_go_on(pg) -> None:
    engine, backend, folder = pg
    (folder / "0001_index.sql").write_text(UP_OUTSIDE + "CREATE UNIQUE INDEX CONCURRENTLY"
                                           " IF NOT EXISTS users_email_i ON users (email);\n")
    (folder / "0002_unique.py").write_text(
        'TRANSACTION = True\n\n\ndef up(db):\n    db.execute("ALTER TABLE users'
        ' ADD CONSTRAINT users_email UNIQUE USING INDEX users_email_i")\n')
    (folder / "0003_index.py").write_text(
        'TRANSACTION = False\n\n\ndef up(db):\n    db.execute("CREATE INDEX CONCURRENTLY'
        ' IF NOT EXISTS users_id_email ON users (id, email)")\n')
    before = backend.snapshot()
    reply = engine.lint(b"r1", Params({}))
    assert reply == {"type": "lint_result", "ok": True, "findings": [],
                     "linted": [{"version": 1, "name": "index"}, {"version": 2, "name": "unique"},
                                {"version": 3, "name": "index"}],
                     "not_linted": []}
    assert backend.snapshot() == before  # no index, no constraint, no tracking table


def test_a_step_that_fails_the_dry_run_leaves_the_python_migrations_after_it_unlinted(
    pg
) -> None:
    engine, backend, folder = pg
    (folder / "0001_bad.sql").write_text(UP + "ALTER TABLE nowhere ADD COLUMN x int;\n")
    (folder / "0002_py.py").write_text('def up(db):\n    db.execute("DROP TABLE users")\n')
    reply = engine.lint(b"r1", Params({}))
    assert reply["findings"] == []  # the .sql file is read from its text: nothing to say
    assert reply["linted"] == [{"version": 1, "name": "bad"}]
    (entry,) = reply["not_linted"]
    assert entry["version"] == 2
    assert entry["reason"] == "the dry run stopped at migration 1 bad, before it ran"
    assert reply["ok"] is False
    assert backend.query("SELECT count(*) FROM users") == [(1,)]


def test_an_applied_python_migration_named_is_not_linted_and_says_why(pg) -> None:
    engine, _, folder = pg
    (folder / "0001_py.py").write_text('def up(db):\n    db.execute("CREATE TABLE t (id int)")\n')
    engine.migrate(b"r1", Params({}))
    reply = engine.lint(b"r2", Params({"versions": [1]}))
    (entry,) = reply["not_linted"]
    assert entry["version"] == 1 and "applied" in entry["reason"]
    assert reply["ok"] is False and reply["findings"] == []
    assert engine.lint(b"r3", Params({}))["linted"] == []  # nothing pending


def test_lint_refuses_a_version_no_file_has_and_versions_that_are_not_integers(pg) -> None:
    from broker.errors import MALFORMED_REQUEST, PRECONDITION_FAILED, ReplyError

    engine, _, _ = pg
    with pytest.raises(ReplyError) as refused:
        engine.lint(b"r1", Params({"versions": [4]}))
    assert refused.value.code == PRECONDITION_FAILED and "version 4" in refused.value.text
    for wrong in ("1", ["1"], [0], [True]):
        with pytest.raises(ReplyError) as malformed:
            engine.lint(b"r2", Params({"versions": wrong}))
        assert malformed.value.code == MALFORMED_REQUEST and "versions" in malformed.value.text


def test_without_pglast_lint_says_how_to_install_it(pg, monkeypatch) -> None:
    from broker.errors import PRECONDITION_FAILED, ReplyError

    engine, _, folder = pg
    (folder / "0001_d.sql").write_text(UP + "DROP TABLE users;\n")
    monkeypatch.setitem(sys.modules, "pglast", None)  # import pglast now raises ImportError
    with pytest.raises(ReplyError) as refused:
        engine.lint(b"r1", Params({}))
    assert refused.value.code == PRECONDITION_FAILED
    assert "pip install 'migrations-node[postgres]'" in refused.value.text


def test_the_worker_does_not_import_pglast_until_a_lint_asks() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, worker.__main__, worker.server, worker.engine,"
         " worker.stores.postgres.store; print('pglast' in sys.modules)"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60,
    )
    assert loaded.stdout.strip() == "False", loaded.stderr


# -- end to end: the command and the stdio node, as real processes ---------------------------


@pytest.fixture
def pg_url(pg_database: str):
    """A schema of its own in the module's database (its URL's search_path names it), with
    the users and posts tables a running application has."""
    from tests.backends import PostgresBackend

    backend = PostgresBackend(pg_database)
    backend.query(f"CREATE SCHEMA {backend.schema}")
    backend.query("CREATE TABLE users (id bigint PRIMARY KEY, email text)")
    backend.query("CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint)")
    try:
        yield backend.url
    finally:
        backend.close()


def run_command(workspace, db: str, folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(Path(__file__).parent.parent / "node.py"), "--db", db,
         "--migrations", str(folder), *args],
        capture_output=True, text=True, env=workspace.env, cwd=workspace.root, timeout=60,
    )


def test_the_lint_command_exits_1_with_the_finding_and_0_on_a_clean_folder(
    workspace, pg_url: str
) -> None:
    dirty = write(workspace.root / "dirty", {
        "0001_fk.sql": UP + "ALTER TABLE posts ADD CONSTRAINT posts_user FOREIGN KEY (user_id)"
                            " REFERENCES users (id);\n"})
    linted = run_command(workspace, pg_url, dirty, "lint")
    assert linted.returncode == 1, linted.stderr
    rule = RULES["adding-foreign-key-constraint"]
    assert linted.stdout.splitlines()[:4] == [
        "dirty/0001_fk.sql:2 adding-foreign-key-constraint",
        "  ALTER TABLE posts ADD CONSTRAINT posts_user FOREIGN KEY (user_id) REFERENCES users"
        " (id);",
        f"  why: {rule.why}",
        f"  fix: {rule.fix}",
    ]
    assert linted.stdout.splitlines()[-1] == "1 finding in 1 migration linted"
    # One worker serves one folder: stop it, then lint the folder that follows the recipes.
    assert run_command(workspace, pg_url, dirty, "stop").returncode == 0
    clean = write(workspace.root / "clean", {
        "0001_fk.sql": UP + "ALTER TABLE posts ADD CONSTRAINT posts_user FOREIGN KEY (user_id)"
                            " REFERENCES users (id) NOT VALID;\n",
        "0002_validate.sql": UP + "ALTER TABLE posts VALIDATE CONSTRAINT posts_user;\n",
        "0003_index.sql": UP_OUTSIDE + "CREATE INDEX CONCURRENTLY posts_user ON posts (user_id);\n",
    })
    linted = run_command(workspace, pg_url, clean, "lint")
    assert (linted.returncode, linted.stdout) == (0, "no finding in 3 migrations linted\n")
    as_json = run_command(workspace, pg_url, clean, "lint", "1", "--json")
    assert json.loads(as_json.stdout) == {
        "type": "lint_result", "in_reply_to": 1, "ok": True, "findings": [],
        "linted": [{"version": 1, "name": "fk"}], "not_linted": []}


def test_the_lint_command_on_sqlite_says_no_rule_applies_and_exits_0(workspace) -> None:
    folder = write(workspace.root / "m", {"0001_d.sql": UP + "DROP TABLE posts;\n"})
    linted = run_command(workspace, str(workspace.db), folder, "lint")
    assert linted.returncode == 0, linted.stderr
    assert linted.stdout.startswith("note: lint's rules are PostgreSQL's")
    assert run_command(workspace, str(workspace.db), folder, "lint", "9").returncode == 2


def test_a_lint_request_through_the_stdio_node_gets_its_findings(workspace, pg_url: str) -> None:
    folder = write(workspace.root / "m", {
        "0001_rename.sql": UP + "ALTER TABLE users RENAME COLUMN email TO mail;\n",
        "0002_py.py": 'def up(db):\n    db.execute("DROP TABLE posts")\n',
    })
    workspace.db = pg_url
    lines = [{"src": "c1", "dest": "migrations", "body": {"type": "lint", "msg_id": 1}},
             {"src": "c1", "dest": "migrations",
              "body": {"type": "lint", "msg_id": 2, "versions": [2]}}]
    replies, completed = workspace.run(lines, "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    first, second = replies
    assert [(f["rule"], Path(f["file"]).name, f["line"]) for f in first["findings"]] == [
        ("renaming-column", "0001_rename.sql", 2), ("dropping-table", "0002_py.py", 2)]
    assert set(first["findings"][0]) >= {"rule", "file", "line", "why", "fix"}
    assert (first["type"], first["in_reply_to"], first["ok"]) == ("lint_result", 1, False)
    assert [f["rule"] for f in second["findings"]] == ["dropping-table"]
    assert [t for (t,) in psycopg_rows(pg_url, "SELECT tablename FROM pg_tables"
                                       " WHERE schemaname = current_schema() ORDER BY 1")] == [
        "posts", "users"]  # the dry runs created no tracking table and dropped nothing


def psycopg_rows(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()
