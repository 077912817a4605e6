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
from tests.support import PROCESS_TIMEOUT_S, PROJECT, request, table_migrations, wait_until

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


def pg_query(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def backends_of(url: str, worker_pid: int, state: str | None = None) -> list[int]:
    """The PostgreSQL backend pids serving a worker (found by its application_name): its
    writer's session and its reader's."""
    rows = pg_query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s"
        " AND (%s::text IS NULL OR state = %s)",
        (f"migrations worker pid {worker_pid} on %", state, state),
    )
    return [pid for (pid,) in rows]


def terminate(url: str, backends: list[int]) -> None:
    pg_query(url, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (backends,))


def slow_migration(folder, sleep_s: int = 60) -> None:
    """Version 2: a statement that runs until a test ends its session."""
    (folder / "0002_slow.py").write_text(
        f"def up(db):\n    db.execute('CREATE TABLE slow (id integer)')\n"
        f"    db.execute('SELECT pg_sleep({sleep_s})')\n")


def test_a_server_cut_away_gets_error_11_and_the_node_carries_on_when_it_is_back(
    workspace, database
):
    from tests.tcp_proxy import TcpProxy

    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, range(1, 3))
    proxy = TcpProxy(("127.0.0.1", 5432))
    name = database.rsplit("/", 1)[1]
    workspace.db = f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
    try:
        node = workspace.live("--migrations", str(folder))
        node.send(request("migrate", 1, to=1))
        assert node.replies(1)[0]["count"] == 1

        proxy.cut()
        node.send(request("status", 2), request("migrate", 3), request("health", 4))
        status, migrate, health = node.replies(3)
        for reply in (status, migrate):
            assert reply["code"] == 11, reply
            assert f"cannot connect to postgresql://postgres@127.0.0.1:{proxy.port}/{name}" \
                in reply["text"] and "nothing ran, try again" in reply["text"]
        assert health["type"] == "health_ok"

        proxy.restore()
        node.send(request("migrate", 5), request("status", 6), request("health", 7))
        migrated, status, after = node.replies(3)
        assert migrated["migrations"] == [{"version": 2, "name": "t2", "status": "applied"}]
        assert [m["applied"] for m in status["migrations"]] == [True, True]
        assert after["worker_pid"] == health["worker_pid"] and after["worker_restarts"] == 0
        assert node.finish() == 0
    finally:
        proxy.close()
        workspace.db = database
    assert pg_query(database, "SELECT version FROM schema_migrations ORDER BY 1") == [(1,), (2,)]


def test_a_session_terminated_idle_is_replaced_and_one_terminated_mid_migration_is_error_11(
    workspace, database
):
    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, range(1, 2))
    slow_migration(folder)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1, to=1), request("health", 2))
    _, health = node.replies(2)
    worker = health["worker_pid"]

    # Idle: the next request never sees it.
    terminate(database, backends_of(database, worker))
    node.send(request("status", 3))
    assert [m["applied"] for m in node.replies(1)[0]["migrations"]] == [True, False]

    # Mid-migration: the step is rolled back by the server, and the reply says so.
    node.send(request("migrate", 4))
    wait_until(lambda: backends_of(database, worker, "active")
               and pg_query(database, "SELECT 1 FROM pg_stat_activity WHERE query LIKE"
                            " 'SELECT pg_sleep%%' AND state = 'active'"),
               what="the slow migration's statement to run")
    terminate(database, backends_of(database, worker, "active"))
    (lost,) = node.replies(1)
    assert lost["code"] == 11, lost
    assert "was lost" in lost["text"] and "rolled back the step in progress" in lost["text"]
    assert "applied" not in lost  # nothing of this request had committed
    assert "slow" not in tables(database)

    (folder / "0002_slow.py").write_text(
        "def up(db):\n    db.execute('CREATE TABLE slow (id integer)')\n")
    node.send(request("migrate", 5), request("health", 6))
    migrated, after = node.replies(2)
    assert migrated["migrations"] == [{"version": 2, "name": "slow", "status": "applied"}]
    assert after["worker_pid"] == worker and after["worker_restarts"] == 0
    assert node.finish() == 0


def test_writes_wait_for_an_owner_on_another_host_then_get_error_11_naming_it(
    workspace, database
):
    from worker.postgres_store import owner_lock_key

    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, range(1, 2))
    other_host = psycopg.connect(
        database, autocommit=True, application_name="migrations worker pid 4242 on far-away")
    try:
        other_host.execute("SELECT pg_advisory_lock(%s)",
                           (owner_lock_key("public", "schema_migrations"),))
        node = workspace.live("--migrations", str(folder), "--owner-wait", "0.5")
        node.send(request("status", 1), request("migrate", 2))
        status, refused = node.replies(2)
        assert status["migrations"] == [{"version": 1, "name": "t1", "applied": False}]
        assert refused["code"] == 11, refused
        assert "held by worker pid 4242 on far-away" in refused["text"]
        assert "waited 0.5 s for it to go, so nothing ran" in refused["text"]
        assert "t1" not in tables(database)
    finally:
        other_host.close()  # the server drops its lock with the session
    node.send(request("migrate", 3))
    assert node.replies(1)[0]["migrations"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert node.finish() == 0


def test_a_standalone_worker_finding_the_database_owned_exits_75_naming_the_holder(
    workspace, database
):
    import subprocess
    import sys

    from worker.postgres_store import owner_lock_key

    holder = psycopg.connect(
        database, autocommit=True, application_name="migrations worker pid 4343 on db-admin")
    try:
        holder.execute("SELECT pg_advisory_lock(%s)",
                       (owner_lock_key("public", "schema_migrations"),))
        completed = subprocess.run(
            [sys.executable, "-m", "worker", "--db", database], cwd=workspace.root.parent,
            env={**workspace.env, "PYTHONPATH": str(PROJECT)}, capture_output=True,
            timeout=PROCESS_TIMEOUT_S)
    finally:
        holder.close()
    assert completed.returncode == 75, completed.stderr
    assert b"held by worker pid 4343 on db-admin" in completed.stderr


@pytest.mark.parametrize(
    ("spoilt", "cause"),
    [
        ("/no_such_database_here", 'database "no_such_database_here" does not exist'),
        ("user:nobody_here", 'role "nobody_here" does not exist'),
    ],
)
def test_a_wrong_database_or_user_is_an_error_reply_and_the_node_keeps_answering(
    workspace, database, spoilt, cause
):
    if spoilt.startswith("user:"):
        workspace.db = database.replace("postgres@", f"{spoilt.removeprefix('user:')}@")
    else:
        workspace.db = database.rsplit("/", 1)[0] + spoilt
    try:
        replies, completed = workspace.run(
            [request("status", 1), request("migrate", 2), request("health", 3)])
    finally:
        workspace.db = database
    assert completed.returncode == 0, completed.stderr
    status, migrate, health = replies
    for reply in (status, migrate):
        assert reply["code"] == 11 and cause in reply["text"], reply
    assert health["type"] == "health_ok"


def test_table_and_schema_are_chosen_by_the_node_and_created_on_first_use(workspace, database):
    options = ("--table", "app_migrations", "--schema", "deploy")
    replies, completed = workspace.run([request("migrate", 1)], *options)
    assert completed.returncode == 0 and replies[0]["count"] == 2, completed.stderr
    in_deploy = pg_query(
        database, "SELECT tablename FROM pg_tables WHERE schemaname = 'deploy'")
    assert {name for (name,) in in_deploy} == {
        "app_migrations", "app_migrations_replies", "app_migrations_history",
        "app_migrations_evicted"}
    assert "schema_migrations" not in tables(database) and "users" in tables(database)

    # The running worker serves that table: a node asking for another one is told so.
    _, other = workspace.run([request("status", 1)])
    assert other.returncode == 2
    assert b"tracks migrations in the table deploy.app_migrations" in other.stderr


def test_a_sql_file_with_a_plpgsql_body_runs_through_the_node(workspace, database):
    folder = workspace.root / "migrations"
    folder.mkdir()
    (folder / "0001_stamped.sql").write_text(
        "-- migrate:up\n"
        "CREATE TABLE stamped (id integer, note text);\n"
        "CREATE FUNCTION stamp() RETURNS trigger AS $body$\n"
        "BEGIN\n    NEW.note := 'stamped; by a trigger';\n    RETURN NEW;\nEND\n"
        "$body$ LANGUAGE plpgsql;\n"
        "CREATE TRIGGER stamp BEFORE INSERT ON stamped FOR EACH ROW EXECUTE FUNCTION stamp();\n"
        "-- migrate:down\n"
        "DROP TABLE stamped;\nDROP FUNCTION stamp();\n")
    replies, completed = workspace.run(
        [request("migrate", 1)], "--migrations", str(folder))
    assert replies[0]["migrations"] == [{"version": 1, "name": "stamped", "status": "applied"}], \
        completed.stderr
    pg_query(database, "INSERT INTO stamped (id) VALUES (1)")
    assert pg_query(database, "SELECT note FROM stamped") == [("stamped; by a trigger",)]
    replies, _ = workspace.run([request("rollback", 2)], "--migrations", str(folder))
    assert replies[0]["type"] == "migration_rolled_back"
    assert "stamped" not in tables(database)


def test_create_index_concurrently_runs_outside_a_transaction_when_the_file_says_so(
    workspace, database
):
    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, range(1, 2))
    (folder / "0002_index.sql").write_text(
        "-- migrate:up transaction:false\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t1_id ON t1 (id);\n"
        "-- migrate:down transaction:false\n"
        "DROP INDEX CONCURRENTLY IF EXISTS t1_id;\n")
    replies, completed = workspace.run(
        [request("migrate", 1), request("rollback", 2)], "--migrations", str(folder))
    migrated, rolled_back = replies
    assert migrated["count"] == 2, completed.stderr
    assert rolled_back == {"type": "migration_rolled_back", "in_reply_to": 2, "version": 2,
                           "name": "index"}
    assert pg_query(database, "SELECT indexname FROM pg_indexes WHERE tablename = 't1'") == []
    replies, _ = workspace.run([request("migrate", 3)], "--migrations", str(folder))
    assert replies[0]["migrations"] == [{"version": 2, "name": "index", "status": "applied"}]
    assert pg_query(database, "SELECT indexname FROM pg_indexes WHERE tablename = 't1'") == [
        ("t1_id",)]


def test_cancel_stops_a_running_query_with_the_servers_query_cancel(workspace, database):
    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, range(1, 2))
    slow_migration(folder, sleep_s=600)
    table_migrations(folder, range(3, 4))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(lambda: pg_query(database, "SELECT 1 FROM pg_stat_activity WHERE query LIKE"
                                " 'SELECT pg_sleep%%' AND state = 'active'"),
               what="the slow migration's statement to run")
    node.send(request("cancel", 2), request("status", 3))
    migrate, cancel, status = node.replies(3)
    assert migrate["code"] == 14 and migrate["cancelled"] is True, migrate
    assert migrate["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert migrate["failed"] == {"version": 2, "name": "slow", "error": "cancelled"}
    assert cancel["cancelled"] == 1
    assert [m["applied"] for m in status["migrations"]] == [True, False, False]
    assert "slow" not in tables(database) and "t3" not in tables(database)
    assert node.finish() == 0
