"""The node end to end on PostgreSQL: the same replies, byte for byte, as on SQLite.

Each test gets a fresh database on the machine's server, dropped afterwards; the module
skips, saying why, only when no server answers.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator

import pytest

from broker import endpoint
from tests.processes import gone
from tests.support import request, table_migrations, wait_until

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install .[test])")

SERVER = "postgresql://postgres@127.0.0.1:5432"
SEED_MIGRATE_REPLY = (
    b'{"type": "migrations_applied", "in_reply_to": 1, "count": 2, "migrations": '
    b'[{"version": 1, "name": "create_users", "status": "applied"}, '
    b'{"version": 2, "name": "add_posts_table", "status": "applied"}]}\n'
)
SEED_ROLLBACK_REPLY = (
    b'{"type": "migration_rolled_back", "in_reply_to": 1, "version": 2, '
    b'"name": "add_posts_table"}\n'
)


@pytest.fixture
def database(workspace, monkeypatch) -> Iterator[str]:
    """The URL of a fresh database on the server; the workspace's node uses it as --db."""
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, workspace.env[endpoint.RUNTIME_DIR_ENV])
    try:
        admin = psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
    name = f"mn_node_{secrets.token_hex(6)}"
    admin.execute(f"CREATE DATABASE {name}")
    url = f"{SERVER}/{name}"
    workspace.db = url  # node_command passes it as --db
    try:
        yield url
    finally:
        pid = workspace_worker_pid(workspace)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def workspace_worker_pid(workspace) -> int | None:
    """The live worker of the workspace's database, from its local owner lock."""
    pid = endpoint.read_owner(endpoint.for_database(workspace.db).lock_path).pid
    return None if pid is None or gone(pid) else pid


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def test_the_seed_exchanges_are_answered_byte_for_byte_on_postgresql(workspace, database):
    migrate = b'{"src": "admin", "dest": "migrations", "body": {"type": "migrate", "msg_id": 1}}\n'
    rollback = migrate.replace(b"migrate", b"rollback")
    _, first = workspace.run(migrate)
    _, second = workspace.run(rollback)
    assert first.stdout == SEED_MIGRATE_REPLY, first.stderr
    assert second.stdout == SEED_ROLLBACK_REPLY
    assert {"users", "schema_migrations"} <= tables(database) and "posts" not in tables(database)


def test_a_failing_migration_leaves_nothing_on_postgresql(workspace, database):
    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, range(1, 2))
    (folder / "0002_broken.sql").write_text(
        "-- migrate:up\nCREATE TABLE broken (x int);\nINSERT INTO nowhere VALUES (1);\n")
    replies, _ = workspace.run([request("migrate", 1)], "--migrations", str(folder))
    assert replies[0]["code"] == 14
    assert replies[0]["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert "broken" not in tables(database) and "t1" in tables(database)


def test_a_worker_killed_mid_migration_loses_nothing_on_postgresql(workspace, database):
    folder = workspace.root / "migrations"
    folder.mkdir()
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    (folder / "0001_slow.py").write_text(
        "import os, time\n\ndef up(db):\n"
        "    db.execute('CREATE TABLE slow (id integer)')\n"
        f"    open({str(started)!r}, 'w').close()\n"
        f"    while os.path.exists({str(block)!r}):\n        time.sleep(0.01)\n")
    table_migrations(folder, range(2, 3))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="the slow migration to start")
    killed = workspace_worker_pid(workspace)
    os.kill(killed, signal.SIGKILL)
    block.unlink()
    node.send(request("health", 2))
    migrated, health = node.replies(2)
    assert [m["version"] for m in migrated["migrations"]] == [1, 2]
    assert health["worker_pid"] != killed and health["worker_restarts"] == 1
    assert node.finish() == 0
    assert {"slow", "t2"} <= tables(database)


def test_the_password_never_reaches_the_worker_argv_or_health(workspace, database):
    url = database.replace("postgres@", "postgres:not-a-secret-really@")
    workspace.db = url
    replies, completed = workspace.run([request("health", 1)])
    assert completed.returncode == 0, completed.stderr
    health = replies[0]
    assert "not-a-secret-really" not in str(health)
    with open(f"/proc/{health['worker_pid']}/cmdline", "rb") as cmdline:
        assert b"not-a-secret-really" not in cmdline.read()
    workspace.db = database
