"""The node end to end on PostgreSQL: the same replies, byte for byte, as on SQLite.

Each test gets a fresh database on the machine's server, dropped afterwards; the module
skips, saying why, only when no server answers.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import struct
from collections.abc import Iterator

import pytest

from broker import endpoint
from tests.processes import gone
from tests.support import (
    PROCESS_TIMEOUT_S,
    PROJECT,
    free_port,
    request,
    table_migrations,
    wait_until,
)

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
    from worker.stores.postgres.store import owner_lock_key

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

    from worker.stores.postgres.store import owner_lock_key

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
        "app_migrations_evicted", "app_migrations_repeats", "app_migrations_schemas"}
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


# -- which worker a URL reaches, and what it hands libpq -----------------------------------


@pytest.fixture
def other_database(database) -> Iterator[str]:
    """The name of a second fresh database on the server, dropped afterwards."""
    name = f"mn_other_{secrets.token_hex(6)}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def served_by(workspace, url: str, *requests: dict) -> list[dict]:
    """The replies a node started with --db `url` gets to `requests`, then a health."""
    workspace.db = url
    replies, completed = workspace.run([*requests, request("health", 99)])
    assert completed.returncode == 0, completed.stderr
    return replies


def test_urls_naming_another_database_or_port_in_their_query_get_workers_of_their_own(
    workspace, database, other_database
):
    from tests.tcp_proxy import TcpProxy

    name = database.rsplit("/", 1)[1]
    # The path names one database and the query another: libpq connects to the query's.
    in_first = served_by(workspace, f"{SERVER}/postgres?dbname={name}", request("migrate", 1))
    in_other = served_by(workspace, f"{SERVER}/postgres?dbname={other_database}",
                         request("migrate", 1))
    proxy = TcpProxy(("127.0.0.1", 5432))  # another port, as another server would have
    try:
        through_proxy = served_by(workspace, f"{SERVER}/{name}?port={proxy.port}",
                                  request("status", 1))
    finally:
        proxy.close()
        workspace.db = database
    assert in_first[0]["count"] == 2 and in_other[0]["count"] == 2, (in_first, in_other)
    assert "users" in tables(database) and "users" in tables(f"{SERVER}/{other_database}")
    pids = {replies[-1]["worker_pid"] for replies in (in_first, in_other, through_proxy)}
    assert len(pids) == 3
    assert f"port={proxy.port}" in through_proxy[-1]["database"]


def test_spellings_of_one_database_share_one_worker(workspace, database):
    name = database.rsplit("/", 1)[1]
    encoded = "".join(f"%{byte:02X}" for byte in name.encode())
    over_tcp = [
        f"postgresql://postgres@127.0.0.1/{name}",
        f"postgres://postgres@127.0.0.1:5432/{name}",
        f"postgresql:///{name}?host=127.0.0.1&user=postgres",
        f"postgresql://%70ostgres@%31%32%37.0.0.1/{encoded}?sslmode=prefer",
    ]
    over_the_socket = [  # /var/run is a link to /run on this machine's kind of system
        f"postgresql:///{name}?host=/var/run/postgresql&user=postgres",
        f"postgresql://postgres@%2Frun%2Fpostgresql/{name}",
    ]
    try:
        tcp = {served_by(workspace, url)[-1]["worker_pid"] for url in over_tcp}
        unix = {served_by(workspace, url)[-1]["worker_pid"] for url in over_the_socket}
    finally:
        workspace.db = database
    assert len(tcp) == 1 and len(unix) == 1 and tcp != unix


def test_a_url_naming_several_hosts_is_served_through_the_one_that_answers(workspace, database):
    name = database.rsplit("/", 1)[1]
    dead_port = free_port()
    try:
        replies = served_by(
            workspace, f"postgresql://postgres@127.0.0.1:{dead_port},127.0.0.1:5432/{name}",
            request("migrate", 1))
        reversed_order = served_by(
            workspace, f"postgresql://postgres@127.0.0.1:5432,127.0.0.1:{dead_port}/{name}",
            request("status", 1))
    finally:
        workspace.db = database
    assert replies[0]["count"] == 2, replies
    assert [m["applied"] for m in reversed_order[0]["migrations"]] == [True, True]
    assert replies[-1]["worker_pid"] != reversed_order[-1]["worker_pid"]  # tried in order
    assert "users" in tables(database)


def test_options_in_the_url_reach_libpq_decoded_once_and_place_the_tables(workspace, database):
    pg_query(database, "CREATE SCHEMA app")
    try:
        replies = served_by(workspace, f"{database}?options=-c%20search_path%3Dapp",
                            request("migrate", 1))
    finally:
        workspace.db = database
    assert replies[0]["count"] == 2, replies
    in_app = pg_query(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'app'")
    assert {name for (name,) in in_app} == {"users", "posts"}
    assert "users" not in tables(database)  # public has the tracking tables only


def test_secrets_reach_the_worker_decoded_through_its_environment_and_nowhere_else(
    workspace, database
):
    password, key_password = "p@ss+w0rd", "k&ey pw"
    url = (database.replace("postgres@", "postgres:p%40ss+w0rd@")
           + "?sslpassword=k%26ey%20pw&sslmode=disable")
    try:
        status, health = served_by(workspace, url, request("status", 1))
    finally:
        workspace.db = database
    assert [m["applied"] for m in status["migrations"]] == [False, False], status
    pid = health["worker_pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read()
    logs = b"".join(log.read_bytes() for log in workspace.runtime.glob("*.log"))
    for secret in (password, key_password, "p%40ss", "k%26ey", "sslpassword"):
        for where in (argv, logs, str(health).encode(), str(status).encode()):
            assert secret.encode() not in where, secret
    with open(f"/proc/{pid}/environ", "rb") as environ:
        variables = dict(line.partition(b"=")[::2] for line in environ.read().split(b"\0"))
    assert variables[b"PGPASSWORD"] == password.encode()  # libpq reads it as it is
    assert variables[b"MIGRATIONS_PGSSLPASSWORD"] == key_password.encode()


class RenamingProxy:
    """A TCP proxy that sends every session to another database than the one it asks for,
    as a pooler's database alias does, by rewriting the startup message."""

    def __init__(self, rename: tuple[str, str]) -> None:
        from tests.tcp_proxy import TcpProxy, _pump

        proxy = self

        class Renaming(TcpProxy):
            def _accept(self, listener) -> None:
                while True:
                    try:
                        client, _ = listener.accept()
                    except OSError:
                        return
                    try:
                        upstream = socket.create_connection(self.target)
                        upstream.sendall(proxy.renamed(client))
                    except OSError:
                        client.close()
                        continue
                    with self._lock:
                        self._sockets += [client, upstream]
                    self._spawn(_pump, client, upstream)
                    self._spawn(_pump, upstream, client)

        self.old, self.new = (name.encode() for name in rename)
        self.tcp = Renaming(("127.0.0.1", 5432))
        self.port = self.tcp.port

    def renamed(self, client: socket.socket) -> bytes:
        """The client's first message, its database renamed if it is a startup message."""
        client.settimeout(PROCESS_TIMEOUT_S)
        (length,) = struct.unpack("!i", receive(client, 4))
        message = receive(client, length - 4)
        client.settimeout(None)
        (version,) = struct.unpack("!i", message[:4])
        if version >> 16 != 3:  # a cancel, SSL or GSS request: passed on as it is
            return struct.pack("!i", length) + message
        fields = message[4:].split(b"\0")
        for index in range(0, len(fields) - 1, 2):
            if fields[index] == b"database" and fields[index + 1] == self.old:
                fields[index + 1] = self.new
        body = message[:4] + b"\0".join(fields)
        return struct.pack("!i", len(body) + 4) + body

    def close(self) -> None:
        self.tcp.close()


def receive(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise OSError("the client went before its first message")
        data += chunk
    return data


def test_a_session_that_reaches_another_database_than_the_url_names_is_refused(
    workspace, database, other_database
):
    name = database.rsplit("/", 1)[1]
    proxy = RenamingProxy((name, other_database))
    try:
        migrate, status, health = served_by(
            workspace, f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}?sslmode=disable",
            request("migrate", 1), request("status", 2))
    finally:
        proxy.close()
        workspace.db = database
    for reply in (migrate, status):
        assert reply["code"] == 11, reply
        assert f'reached database "{other_database}", not "{name}"' in reply["text"]
        assert "nothing ran, and nothing will until the URL names" in reply["text"]
    assert health["type"] == "health_ok"
    assert not tables(f"{SERVER}/{other_database}") and not tables(database)
