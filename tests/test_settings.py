"""Settings resolved once (broker/cli/settings.py): the command line, the environment, the
nearest pyproject.toml's [tool.migrations-node] table, then defaults that fit the folder you
stand in; the stdio node and the commands agree. Real node processes in real folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import NODE, PROCESS_TIMEOUT_S, PROJECT, request, table_migrations

SEED_MIGRATE = ('{"type": "migrations_applied", "in_reply_to": 1, "count": 2, "migrations":'
                ' [{"version": 1, "name": "create_users", "status": "applied"}, {"version": 2,'
                ' "name": "add_posts_table", "status": "applied"}]}\n')


def node(workspace, cwd: Path, *args: str, stdin: str = "", **environ: str):
    """node.py run to its end in `cwd`, with no --db unless given: (status, stdout, stderr)."""
    completed = subprocess.run([sys.executable, str(NODE), *args], input=stdin.encode(),
                               capture_output=True, cwd=cwd, env={**workspace.env, **environ},
                               timeout=PROCESS_TIMEOUT_S)
    return completed.returncode, completed.stdout.decode(), completed.stderr.decode()


def config(workspace, cwd: Path, *args: str, **environ: str) -> dict[str, tuple[str, str]]:
    """`config`'s table as {setting: (value, origin)}."""
    status, out, err = node(workspace, cwd, *args, "config", **environ)
    assert status == 0, err
    rows = {}
    header, *lines = out.splitlines()
    value_at, from_at = header.index("value"), header.index("from")
    for line in lines:
        rows[line[:value_at].strip()] = (line[value_at:from_at].strip(), line[from_at:].strip())
    return rows


def folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def project(root: Path, table: str) -> Path:
    """A project folder whose pyproject.toml holds `table` under [tool.migrations-node]."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "app"\n\n[tool.migrations-node]\n'
                                         f"{table}\n")
    (root / "src" / "deep").mkdir(parents=True)
    return root


def test_the_project_file_configures_every_folder_inside_it_relative_to_itself(workspace):
    root = project(workspace.root / "app", 'db = "var/app.db"\nmigrations = "db/migrations"\n'
                                           'table = "app_migrations"')
    (root / "var").mkdir()
    table_migrations(folder(root / "db" / "migrations"), range(1, 3))
    inside = root / "src" / "deep"
    rows = config(workspace, inside)
    file = str(root / "pyproject.toml")
    assert rows["db"] == (str(root / "var" / "app.db"), file)
    assert rows["migrations"] == (str(root / "db" / "migrations"), file)
    assert rows["table"] == ("app_migrations", file)
    assert rows["owner-wait"] == ("30.0", "default")

    # The stdio node reads the same settings: it migrates the project's database.
    status, out, err = node(workspace, inside, stdin=json.dumps(request("migrate", 1)) + "\n")
    assert status == 0, err
    assert json.loads(out)["count"] == 2
    status, out, _ = node(workspace, inside, "status")
    assert status == 0 and out.count("applied") >= 2
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(root / "var" / "app.db")) as db:
        assert db.execute("SELECT count(*) FROM app_migrations").fetchone() == (2,)


def test_the_environment_beats_the_file_and_the_command_line_beats_both(workspace):
    root = project(workspace.root / "app", 'db = "file.db"')
    (root / "migrations").mkdir()
    env_db = str(workspace.root / "env.db")
    rows = config(workspace, root, DATABASE_URL=env_db)
    assert rows["db"] == (env_db, "DATABASE_URL")
    rows = config(workspace, root, "--db", "cli.db", DATABASE_URL=env_db)
    assert rows["db"] == ("cli.db", "command line")
    rows = config(workspace, root, MIGRATIONS_DIR=str(workspace.root))
    assert rows["migrations"] == (str(workspace.root), "MIGRATIONS_DIR")
    rows = config(workspace, root, DATABASE_URL="postgresql://app:s3cret@db.example/appdb")
    assert rows["db"] == ("postgresql://app@db.example/appdb", "DATABASE_URL")


def test_database_url_takes_a_sqlite_path_for_the_node_and_the_commands_alike(workspace):
    here = workspace.root / "here"
    here.mkdir()
    db = workspace.root / "elsewhere.db"
    status, out, err = node(workspace, here, stdin=json.dumps(request("migrate", 1)) + "\n",
                            DATABASE_URL=str(db))
    assert (status, out) == (0, SEED_MIGRATE), err
    status, out, err = node(workspace, here, "health", "--json", DATABASE_URL=str(db))
    assert json.loads(out)["database"] == str(db), err
    assert not (here / "migrations.db").exists()


@pytest.mark.parametrize(("table", "said"), [
    ('databse = "x.db"', "unknown key 'databse'"),
    ("wal = \"yes\"", "wal must be true or false"),
    ("owner-wait = -1", "owner-wait must be a number of seconds"),
    ("[tool.migrations-node.nested]", "unknown key 'nested'"),
])
def test_a_bad_project_file_is_exit_2_naming_the_file_and_key(workspace, table, said):
    root = project(workspace.root / "app", table)
    for args in (("status",), ()):
        status, out, err = node(workspace, root, *args)
        assert status == 2 and out == "", (args, err)
        assert str(root / "pyproject.toml") in err and said in err, err


def test_a_folder_with_its_own_migrations_is_used_by_bare_commands_and_nodes_alike(workspace):
    here = workspace.root / "here"
    table_migrations(folder(here / "migrations"), range(1, 4))
    status, out, err = node(workspace, here, "status", "--migrations", "migrations")
    assert status == 0, err
    # The same worker serves a bare command now: both mean ./migrations.
    status, out, err = node(workspace, here, "status")
    assert status == 0, err
    assert [line.split()[1] for line in out.splitlines()[1:4]] == ["t1", "t2", "t3"]
    status, out, err = node(workspace, here, stdin=json.dumps(request("migrate", 1)) + "\n")
    assert json.loads(out)["count"] == 3, err


def test_with_nothing_here_the_node_serves_the_bundled_examples_and_a_command_says_so(
        workspace):
    empty = workspace.root / "empty"
    empty.mkdir()
    status, out, err = node(workspace, empty, stdin=json.dumps(request("migrate", 1)) + "\n")
    assert (status, out, err) == (0, SEED_MIGRATE, "")
    status, out, err = node(workspace, empty, "status")
    assert status == 0
    assert "using the bundled example migrations in" in err and "create_users" in out


def test_new_with_no_folder_anywhere_creates_one_here_never_in_the_tool(workspace):
    empty = workspace.root / "empty"
    empty.mkdir()
    before = sorted(path.name for path in (PROJECT / "migrations").iterdir())
    status, out, err = node(workspace, empty, "new", "add_users", "--sql")
    assert status == 0, err
    assert out.strip() == str(empty / "migrations" / "0001_add_users.sql")
    assert sorted(path.name for path in (PROJECT / "migrations").iterdir()) == before


@pytest.mark.parametrize(("given", "path"), [
    ("sqlite:var/app.db", "var/app.db"),  # dbmate
    ("sqlite3://var/app.db", "var/app.db"),  # golang-migrate
    ("sqlite:///srv/app.db", "/srv/app.db"),
    ("app:2024.db", "app:2024.db"),  # a file with a colon in its name
])
def test_sqlite_urls_as_dbmate_and_golang_migrate_write_them_name_their_file(
        workspace, given, path):
    here = folder(workspace.root / "here")
    assert config(workspace, here, DATABASE_URL=given)["db"] == (path, "DATABASE_URL")


def test_a_url_of_a_database_this_tool_does_not_reach_is_refused_without_its_password(
        workspace):
    here = folder(workspace.root / "here")
    status, out, err = node(workspace, here, "status",
                            DATABASE_URL="sqlserver://sa:s3cret@db/app")
    assert (status, out) == (2, "")
    assert "the database from DATABASE_URL is a sqlserver: URL" in err and "s3cret" not in err
    assert not list(here.iterdir())  # no file named after the URL
