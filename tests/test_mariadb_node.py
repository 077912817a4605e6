"""The node end to end on MariaDB: the seed's replies byte for byte, and the exact partial
state where DDL commits at once (error 14 naming the statement, status's `partial`, resume,
22 for changed statements and for a statement a killed worker left uncertain, resolve).

Each test gets a fresh database on the machine's server, dropped afterwards; the module
skips, saying why, only when no server answers or PyMySQL is missing.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator

import pytest

from broker import endpoint
from tests.processes import alive_owner
from tests.support import request, table_migrations, wait_until

pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed (pip install .[test])")

HOST, PORT = "127.0.0.1", 3306
SEED_MIGRATE_REPLY = (
    b'{"type": "migrations_applied", "in_reply_to": 1, "count": 2, "migrations": '
    b'[{"version": 1, "name": "create_users", "status": "applied"}, '
    b'{"version": 2, "name": "add_posts_table", "status": "applied"}]}\n'
)
SEED_ROLLBACK_REPLY = (
    b'{"type": "migration_rolled_back", "in_reply_to": 1, "version": 2, '
    b'"name": "add_posts_table"}\n'
)


def admin() -> pymysql.connections.Connection:
    return pymysql.connect(host=HOST, port=PORT, user="root", password="", autocommit=True,
                           connect_timeout=5)


@pytest.fixture
def database(workspace, monkeypatch) -> Iterator[str]:
    """The URL of a fresh database on the server; the workspace's node uses it as --db."""
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, workspace.env[endpoint.RUNTIME_DIR_ENV])
    try:
        connection = admin()
    except pymysql.Error as exc:
        pytest.skip(f"no MariaDB server at {HOST}:{PORT}: {exc}")
    name = f"mn_node_{secrets.token_hex(6)}"
    connection.cursor().execute(f"CREATE DATABASE {name}")
    url = f"mysql://root@{HOST}:{PORT}/{name}"
    workspace.db = url
    try:
        yield url
    finally:
        pid = worker_pid(workspace)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        connection.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        connection.close()


@pytest.fixture
def folder(workspace):
    path = workspace.root / "migrations"
    path.mkdir()
    return path


def worker_pid(workspace) -> int | None:
    return alive_owner(workspace.db)


def query(url: str, sql: str) -> list[tuple]:
    name = url.rsplit("/", 1)[1]
    with admin() as connection, connection.cursor() as cursor:
        cursor.execute(f"USE {name}")
        cursor.execute(sql)
        return list(cursor.fetchall())


def tables(url: str) -> set[str]:
    return {name for (name,) in query(url, "SHOW TABLES")}


def run(workspace, folder, *requests: dict) -> list[dict]:
    replies, completed = workspace.run(list(requests), "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    return replies


THREE_DDL = ("-- migrate:up\nCREATE TABLE a (id INT);\nALTER TABLE a ADD COLUMN b INT;\n"
             "{third};\n-- migrate:down\nDROP TABLE a;\n")


def test_the_seed_exchanges_are_answered_byte_for_byte_on_mariadb(workspace, database):
    migrate = b'{"src": "admin", "dest": "migrations", "body": {"type": "migrate", "msg_id": 1}}\n'
    _, first = workspace.run(migrate)
    _, second = workspace.run(migrate.replace(b"migrate", b"rollback"))
    assert first.stdout == SEED_MIGRATE_REPLY, first.stderr
    assert second.stdout == SEED_ROLLBACK_REPLY
    assert {"users", "schema_migrations"} <= tables(database) and "posts" not in tables(database)


def test_a_failing_ddl_statement_leaves_the_statements_before_it_said_exactly(
    workspace, database, folder
):
    table_migrations(folder, range(1, 2))
    broken = folder / "0002_grow.sql"
    broken.write_text(THREE_DDL.format(third="ALTER TABLE nowhere ADD COLUMN c INT"))
    before, failed, status = run(workspace, folder, request("status", 0),
                                 request("migrate", 1), request("status", 2))
    assert "partial" not in before["migrations"][1]
    assert failed["code"] == 14
    assert failed["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert failed["failed"]["statement"] == 3
    assert failed["failed"]["line"] == "ALTER TABLE nowhere ADD COLUMN c INT;"
    assert failed["partial"] == {"action": "apply", "statements_done": 2}
    assert "statements 1..2 of it stay applied" in failed["text"]
    assert status["migrations"][1] == {"version": 2, "name": "grow", "applied": False,
                                       "partial": {"action": "apply", "statements_done": 2}}
    assert [c for (c,) in query(database, "SELECT column_name FROM information_schema.columns"
                                " WHERE table_schema = DATABASE() AND table_name = 'a'")] \
        == ["id", "b"]

    # Fixed after statement 2: statements 1 and 2 do not run again (CREATE TABLE a would fail).
    broken.write_text(THREE_DDL.format(third="ALTER TABLE a ADD COLUMN c INT"))
    migrated, status = run(workspace, folder, request("migrate", 3), request("status", 4))
    assert migrated["migrations"] == [{"version": 2, "name": "grow", "status": "applied"}]
    assert "partial" not in status["migrations"][1] and status["migrations"][1]["applied"]


def test_a_resume_is_refused_when_a_statement_that_ran_has_changed(workspace, database, folder):
    broken = folder / "0001_grow.sql"
    broken.write_text(THREE_DDL.format(third="ALTER TABLE nowhere ADD COLUMN c INT"))
    run(workspace, folder, request("migrate", 1))
    broken.write_text(THREE_DDL.replace("ADD COLUMN b", "ADD COLUMN bb").format(
        third="ALTER TABLE a ADD COLUMN c INT"))
    (refused,) = run(workspace, folder, request("migrate", 2))
    assert refused["code"] == 22
    assert "statement 2 is not the one that ran then" in refused["text"]
    assert "ADD COLUMN bb" in refused["text"]
    assert [c for (c,) in query(database, "SELECT column_name FROM information_schema.columns"
                                " WHERE table_schema = DATABASE() AND table_name = 'a'")] \
        == ["id", "b"]


def test_a_migration_of_dml_only_is_atomic(workspace, database, folder):
    (folder / "0001_t.sql").write_text("-- migrate:up\nCREATE TABLE t (id INT PRIMARY KEY);\n")
    (folder / "0002_rows.sql").write_text(
        "-- migrate:up\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (1);\n")
    failed, status = run(workspace, folder, request("migrate", 1), request("status", 2))
    assert failed["code"] == 14 and "partial" not in failed
    assert "rolled back, so it is not applied" in failed["text"]
    assert query(database, "SELECT COUNT(*) FROM t") == [(0,)]
    assert status["migrations"][1] == {"version": 2, "name": "rows", "applied": False}


def test_a_statement_a_killed_worker_left_running_is_said_uncertain_until_resolved(
    workspace, database, folder
):
    started = workspace.root / "started"
    (folder / "0001_slow.py").write_text(
        "import os\n\ndef up(db):\n"
        "    db.execute('CREATE TABLE a (id INT)')\n"
        f"    if not os.path.exists({str(workspace.root / 'fixed')!r}):\n"
        f"        open({str(started)!r}, 'w').close()\n"
        "        db.execute('CREATE TABLE slow AS SELECT SLEEP(30) AS x')\n"
        "    db.execute('CREATE TABLE c (id INT)')\n\n"
        "def down(db):\n    db.execute('DROP TABLE c')\n")
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="the slow statement to start")
    wait_until(lambda: query(database, "SELECT running FROM schema_migration_partials")
               == [(2,)], what="the step record before statement 2")
    os.kill(worker_pid(workspace), signal.SIGKILL)
    (refused,) = node.replies(1)
    assert refused["code"] == 22, refused
    assert refused["partial"]["uncertain"] == {
        "statement": 2, "line": "CREATE TABLE slow AS SELECT SLEEP(30) AS x"}
    assert "may or may not have taken effect" in refused["text"]
    node.send(request("status", 2))
    (status,) = node.replies(1)
    assert status["migrations"][0]["partial"] == {
        "action": "apply", "statements_done": 1,
        "uncertain": {"statement": 2, "line": "CREATE TABLE slow AS SELECT SLEEP(30) AS x"}}

    # The operator undoes it by hand, says so, and the next migrate runs it whole.
    query(database, "DROP TABLE IF EXISTS slow")
    query(database, "DROP TABLE a")
    (workspace.root / "fixed").touch()
    node.send(request("resolve", 3, version=1, applied=False), request("migrate", 4),
              request("history", 5))
    resolved, migrated, history = node.replies(3)
    assert resolved == {"type": "migration_resolved", "in_reply_to": 3, "version": 1,
                        "name": "slow", "applied": False}
    assert migrated["migrations"] == [{"version": 1, "name": "slow", "status": "applied"}]
    assert [e["action"] for e in history["events"]] == ["resolved_not_applied", "apply"]
    assert node.finish() == 0
    assert {"a", "c"} <= tables(database)


def test_resolve_applied_records_a_migration_finished_by_hand(workspace, database, folder):
    broken = folder / "0001_grow.sql"
    broken.write_text(THREE_DDL.format(third="ALTER TABLE nowhere ADD COLUMN c INT"))
    run(workspace, folder, request("migrate", 1))
    query(database, "ALTER TABLE a ADD COLUMN c INT")  # the person finishes it
    resolved, status, again = run(workspace, folder,
                                  request("resolve", 2, version=1, applied=True),
                                  request("status", 3), request("resolve", 4, version=1,
                                                                applied=True))
    assert resolved["applied"] is True
    assert status["migrations"] == [{"version": 1, "name": "grow", "applied": True}]
    assert again["code"] == 22 and "did not stop partway" in again["text"]


def test_a_dry_run_refuses_a_statement_that_would_commit_and_runs_dml(
    workspace, database, folder
):
    (folder / "0001_t.sql").write_text("-- migrate:up\nCREATE TABLE t (id INT);\n")
    (folder / "0002_rows.sql").write_text("-- migrate:up\nINSERT INTO t VALUES (1);\n")
    refused, migrated, dry = run(workspace, folder, request("migrate", 1, dry_run=True),
                                 request("migrate", 2, to=1),
                                 request("migrate", 3, dry_run=True))
    assert refused["code"] == 22 and refused["dry_run"] is True
    assert "cannot roll it back" in refused["text"] and "t" not in tables(database) - {"t"}
    assert migrated["count"] == 1
    assert dry["dry_run"] is True and dry["count"] == 1
    assert query(database, "SELECT COUNT(*) FROM t") == [(0,)]


def test_a_cancel_kills_the_running_query(workspace, database, folder):
    started = workspace.root / "started"
    (folder / "0002_wait.py").write_text(
        f"def up(db):\n    open({str(started)!r}, 'w').close()\n"
        "    db.execute('INSERT INTO nothing SELECT SLEEP(60)')\n")
    (folder / "0001_nothing.sql").write_text(
        "-- migrate:up\nCREATE TABLE nothing (x INT);\n")
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="the slow statement to start")
    node.send(request("cancel", 2))
    replies = node.replies(2)
    failed = next(reply for reply in replies if reply.get("in_reply_to") == 1)
    assert failed["code"] == 14 and failed["cancelled"] is True
    assert failed["applied"] == [{"version": 1, "name": "nothing", "status": "applied"}]
    assert node.finish() == 0


def test_stored_programs_written_for_the_mysql_client_run_unchanged(workspace, database, folder):
    (folder / "0001_audit.sql").write_text(
        "-- migrate:up\n"
        "CREATE TABLE t (id INT PRIMARY KEY, n INT);\n"
        "CREATE TABLE audit (id INT);\n"
        "DELIMITER $$\n"
        "CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW\n"
        "BEGIN\n  IF NEW.n > 0 THEN\n    INSERT INTO audit VALUES (NEW.id);\n  END IF;\nEND$$\n"
        "CREATE PROCEDURE fill(k INT)\nBEGIN\n  DECLARE i INT DEFAULT 0;\n"
        "  WHILE i < k DO\n    INSERT INTO t VALUES (i, i);\n    SET i = i + 1;\n"
        "  END WHILE;\nEND$$\n"
        "DELIMITER ;\n"
        "CALL fill(3); # comment\n"
        "-- migrate:down\nDROP PROCEDURE fill;\nDROP TABLE audit;\nDROP TABLE t;\n")
    (migrated,) = run(workspace, folder, request("migrate", 1))
    assert migrated["count"] == 1, migrated
    assert query(database, "SELECT id FROM audit ORDER BY id") == [(1,), (2,)]


def test_python_migrations_use_question_mark_placeholders(workspace, database, folder):
    (folder / "0001_rows.py").write_text(
        "def up(db):\n    db.execute('CREATE TABLE t (id INT, s TEXT)')\n"
        "    db.executemany('INSERT INTO t VALUES (?, ?)', [(1, '50% off?'), (2, 'x')])\n"
        "    assert db.query('SELECT s FROM t WHERE id = ?', (1,)) == [('50% off?',)]\n")
    (migrated,) = run(workspace, folder, request("migrate", 1))
    assert migrated["count"] == 1, migrated


def test_the_password_never_reaches_the_worker_argv_or_health(workspace, database):
    workspace.db = database.replace("root@", "root:@")  # an empty password, still a secret
    replies, completed = workspace.run([request("health", 1)])
    assert completed.returncode == 0, completed.stderr
    health = replies[0]
    assert health["database"] == database and health["tracking_table"].endswith(
        ".schema_migrations")
    workspace.db = database


def test_a_second_worker_is_refused_naming_the_holder(database):
    from worker.lock import AlreadyOwned
    from worker.stores.mariadb.store import MariaDbStore

    first, second = MariaDbStore(database), MariaDbStore(database)
    try:
        first.acquire_owner(b"")
        # performance_schema, which would name its pid, is off by default on MariaDB.
        with pytest.raises(AlreadyOwned, match=r"is held by (connection \d+ of root from"
                           rf"|worker pid {os.getpid()} on)"):
            second.acquire_owner(b"")
    finally:
        first.release_owner()
        first.close()
        second.close()


def test_rollback_of_a_partly_applied_migration_runs_the_matching_down_statements(
    workspace, database, folder
):
    table_migrations(folder, range(1, 2))
    (folder / "0002_grow.sql").write_text(
        "-- migrate:up\nCREATE TABLE a (id INT);\nCREATE TABLE b (id INT);\n"
        "ALTER TABLE nowhere ADD COLUMN c INT;\n"
        "-- migrate:down\nALTER TABLE nowhere DROP COLUMN c;\nDROP TABLE b;\nDROP TABLE a;\n")
    failed, rolled, status, history = run(
        workspace, folder, request("migrate", 1), request("rollback", 2), request("status", 3),
        request("history", 4))
    assert failed["partial"] == {"action": "apply", "statements_done": 2}
    assert rolled == {"type": "migration_rolled_back", "in_reply_to": 2, "version": 2,
                      "name": "grow"}
    assert status["migrations"] == [{"version": 1, "name": "t1", "applied": True},
                                    {"version": 2, "name": "grow", "applied": False}]
    assert [e["action"] for e in history["events"]] == ["apply", "rollback"]
    assert tables(database) & {"a", "b"} == set() and "t1" in tables(database)


def test_rollback_of_a_partly_applied_migration_is_refused_when_its_down_cannot_match(
    workspace, database, folder
):
    (folder / "0001_grow.sql").write_text(
        "-- migrate:up\nCREATE TABLE a (id INT);\nALTER TABLE nowhere ADD COLUMN c INT;\n"
        "-- migrate:down\nDROP TABLE a;\n")
    _, refused, status = run(workspace, folder, request("migrate", 1), request("rollback", 2),
                             request("status", 3))
    assert refused["code"] == 22
    assert "its down section has 1 statements and its up section 2" in refused["text"]
    assert "send resolve with version 1 and applied false" in refused["text"]
    assert status["migrations"][0]["partial"] == {"action": "apply", "statements_done": 1}
    assert "a" in tables(database)


def test_a_rollback_that_stops_partway_goes_on_where_it_stopped(workspace, database, folder):
    down = folder / "0001_two.sql"
    down.write_text("-- migrate:up\nCREATE TABLE a (id INT);\nCREATE TABLE b (id INT);\n"
                    "-- migrate:down\nDROP TABLE b;\nDROP TABLE nowhere;\n")
    _, failed, refused = run(workspace, folder, request("migrate", 1), request("rollback", 2),
                             request("migrate", 3))
    assert failed["code"] == 14 and failed["partial"] == {"action": "rollback",
                                                          "statements_done": 1}
    assert refused["code"] == 22 and "send rollback to go on" in refused["text"]
    down.write_text("-- migrate:up\nCREATE TABLE a (id INT);\nCREATE TABLE b (id INT);\n"
                    "-- migrate:down\nDROP TABLE b;\nDROP TABLE a;\n")
    rolled, status = run(workspace, folder, request("rollback", 4), request("status", 5))
    assert rolled["version"] == 1, rolled
    assert status["migrations"] == [{"version": 1, "name": "two", "applied": False}]
    assert tables(database) & {"a", "b"} == set()


def test_a_cancel_after_ddl_says_what_stays(workspace, database, folder):
    started = workspace.root / "started"
    (folder / "0001_wait.py").write_text(
        "def up(db):\n    db.execute('CREATE TABLE a (id INT)')\n"
        f"    open({str(started)!r}, 'w').close()\n"
        "    db.execute('CREATE TABLE b AS SELECT SLEEP(60) AS x')\n")
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="the slow statement to start")
    wait_until(lambda: query(database, "SELECT running FROM schema_migration_partials")
               == [(2,)], what="the step record before statement 2")
    node.send(request("cancel", 2), request("status", 3))
    replies = {reply["in_reply_to"]: reply for reply in node.replies(3)}
    failed = replies[1]
    assert failed["code"] == 14 and failed["cancelled"] is True, failed
    assert failed["partial"] == {"action": "apply", "statements_done": 1}
    assert failed["failed"]["statement"] == 2
    node.send(request("status", 4))
    (status,) = node.replies(1)
    assert status["migrations"][0]["partial"] == {"action": "apply", "statements_done": 1}
    assert node.finish() == 0


def test_foreign_keys_off_are_checked_before_the_step_commits(workspace, database, folder):
    (folder / "0001_tables.sql").write_text(
        "-- migrate:up\nCREATE TABLE p (id INT PRIMARY KEY);\n"
        "CREATE TABLE c (id INT, p_id INT, FOREIGN KEY (p_id) REFERENCES p (id));\n")
    (folder / "0002_orphan.sql").write_text(
        "-- migrate:foreign_keys off\n-- migrate:up\nINSERT INTO c VALUES (1, 42);\n")
    migrated, failed = run(workspace, folder, request("migrate", 1, to=1), request("migrate", 2))
    assert migrated["count"] == 1
    assert failed["code"] == 14 and "c" in failed["failed"]["error"], failed
    assert query(database, "SELECT COUNT(*) FROM c") == [(0,)]


def test_baseline_history_validate_and_targets_work_as_on_the_other_databases(
    workspace, database, folder
):
    table_migrations(folder, range(1, 4))
    baselined, migrated, history, validation, rolled = run(
        workspace, folder, request("baseline", 1, to=1), request("migrate", 2, to=2),
        request("history", 3), request("validate", 4), request("rollback", 5, to=1))
    assert baselined["count"] == 1 and migrated["count"] == 1
    assert [e["action"] for e in history["events"]] == ["baseline", "apply"]
    assert validation["ok"] is True
    assert rolled["migrations"] == [{"version": 2, "name": "t2", "status": "rolled_back"}]


def test_a_session_setting_a_migration_left_behind_does_not_reach_the_next(
    workspace, database, folder
):
    (folder / "0001_loose.sql").write_text(
        "-- migrate:up\nSET SESSION sql_mode = '';\n"
        "CREATE TEMPORARY TABLE scratch (x INT);\nCREATE TABLE t (x TINYINT);\n")
    (folder / "0002_strict.sql").write_text(
        "-- migrate:up\nINSERT INTO t VALUES (1000);\n")
    first, second = run(workspace, folder, request("migrate", 1, to=1), request("migrate", 2))
    assert first["count"] == 1
    # Under the session's own STRICT_TRANS_TABLES the out-of-range value is refused.
    assert second["code"] == 14 and "1264" in second["failed"]["error"], second


def test_mysql_and_mariadb_urls_of_one_database_share_one_worker(workspace, database):
    (first,) = workspace.run([request("health", 1)])[0]
    workspace.db = database.replace("mysql://", "mariadb://").replace(":3306", "")
    (second,) = workspace.run([request("health", 1)])[0]
    workspace.db = database
    assert second["worker_pid"] == first["worker_pid"]


def test_a_tracking_table_dropped_by_hand_is_refused_until_baseline(
    workspace, database, folder
):
    table_migrations(folder, range(1, 3))
    run(workspace, folder, request("migrate", 1))
    query(database, "DROP TABLE schema_migrations")
    refused, baselined, status = run(workspace, folder, request("migrate", 2),
                                     request("baseline", 3, to=2), request("status", 4))
    assert refused["code"] == 22 and "dropped by hand" in refused["text"]
    assert "send baseline with to: 2" in refused["text"]
    assert baselined["count"] == 2
    assert [m["applied"] for m in status["migrations"]] == [True, True]


def test_a_statement_that_waits_too_long_for_a_lock_gets_error_11(workspace, database, folder):
    (folder / "0001_t.sql").write_text("-- migrate:up\nCREATE TABLE t (id INT PRIMARY KEY);\n"
                                       "INSERT INTO t VALUES (1);\n")
    (folder / "0002_touch.sql").write_text("-- migrate:up\nUPDATE t SET id = 2 WHERE id = 1;\n")
    options = ("--migrations", str(folder), "--lock-timeout", "1", "--lock-retries", "1")
    workspace.run([request("migrate", 1, to=1)], *options)  # the worker keeps its options
    name = database.rsplit("/", 1)[1]
    blocker = admin()
    try:
        with blocker.cursor() as cursor:
            cursor.execute(f"USE {name}")
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM t FOR UPDATE")
            replies, _ = workspace.run([request("migrate", 2)], *options)
    finally:
        blocker.close()
    (refused,) = replies
    assert refused["code"] == 11, refused
    assert "gave up after 2 tries" in refused["text"]
    assert query(database, "SELECT id FROM t") == [(1,)]


def test_status_sees_a_partial_state_that_changed_nothing_else(workspace, database, folder):
    table_migrations(folder, range(1, 2))
    (folder / "0002_grow.sql").write_text(
        THREE_DDL.format(third="ALTER TABLE nowhere ADD COLUMN c INT"))
    run(workspace, folder, request("migrate", 1, to=1))
    before, failed, after = run(workspace, folder, request("status", 1), request("migrate", 2),
                                request("status", 3))
    assert before["migrations"][1] == {"version": 2, "name": "grow", "applied": False}
    assert failed["code"] == 14
    assert after["migrations"][1]["partial"] == {"action": "apply", "statements_done": 2}


def test_the_command_line_shows_a_partial_migration_and_resolves_it(workspace, database, folder):
    import subprocess

    (folder / "0001_grow.sql").write_text(
        THREE_DDL.format(third="ALTER TABLE nowhere ADD COLUMN c INT"))
    run(workspace, folder, request("migrate", 1))

    def command(*words: str) -> subprocess.CompletedProcess:
        return subprocess.run(workspace.node_command("--migrations", str(folder), *words),
                              capture_output=True, text=True, env=workspace.env,
                              cwd=workspace.root, timeout=60)

    status = command("status")
    assert "partial: up 1..2 done" in status.stdout, status.stderr
    assert "1 stopped partway" in status.stdout
    resolved = command("resolve", "1", "--applied")
    assert resolved.returncode == 0, resolved.stderr
    assert "resolved  1  grow: recorded as applied" in resolved.stdout
    assert "applied" in command("status").stdout.splitlines()[1]


def test_a_file_that_cannot_load_after_a_ddl_migration_has_no_partial_state(
    workspace, database, folder
):
    table_migrations(folder, range(1, 2))
    (folder / "0002_broken.py").write_text("def up(db):\n    return (\n")  # SyntaxError
    failed, status = run(workspace, folder, request("migrate", 1), request("status", 2))
    assert failed["code"] == 14 and "partial" not in failed, failed
    assert failed["failed"]["version"] == 2 and "statement" not in failed["failed"]
    assert "partial" not in status["migrations"][1]


def test_writes_wait_for_an_owner_elsewhere_then_get_error_11_naming_it(
    workspace, database, folder
):
    from worker.stores.mariadb.store import owner_lock_name

    table_migrations(folder, range(1, 2))
    name = database.rsplit("/", 1)[1]
    other = admin()
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()",
                           (owner_lock_name(name, "schema_migrations"),))
            taken, holder = cursor.fetchone()
        assert taken == 1
        node = workspace.live("--migrations", str(folder), "--owner-wait", "0.5")
        node.send(request("status", 1), request("migrate", 2))
        status, refused = node.replies(2)
        assert status["migrations"] == [{"version": 1, "name": "t1", "applied": False}]
        assert refused["code"] == 11, refused
        assert f"is held by connection {holder} of root from 127.0.0.1:" in refused["text"]
        assert "waited 0.5 s for it to go, so nothing ran" in refused["text"]
    finally:
        other.close()  # the server lets go of the lock with the session
    node.send(request("migrate", 3))
    assert node.replies(1)[0]["migrations"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert node.finish() == 0


def test_progress_and_live_status_work_as_on_the_other_databases(workspace, database, folder):
    from tests.support import blocking_migration

    table_migrations(folder, range(1, 2))
    started, block = blocking_migration(folder, "0002_slow.py", "slow")
    writer = workspace.live("--migrations", str(folder))
    writer.send(request("migrate", 1, progress=True))
    wait_until(started.exists, what="migration 2 to start")
    reader = workspace.live("--migrations", str(folder))
    reader.send(request("health", 1))
    (health,) = reader.replies(1)
    assert health["running"]["version"] == 2 and health["running"]["done"] == 1
    block.unlink()
    first, second, migrated = writer.replies(3)
    assert [(p["version"], p["done"], p["total"]) for p in (first, second)] == [(1, 1, 2),
                                                                                (2, 2, 2)]
    assert migrated["count"] == 2
    assert writer.finish() == 0 and reader.finish() == 0


@pytest.fixture
def password_user(database) -> Iterator[tuple[str, str]]:
    """A user of the test's database with a password: (user, password)."""
    name, secret = f"mn_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(6)}"
    with admin() as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{secret}'")
        cursor.execute(f"GRANT ALL ON {database.rsplit('/', 1)[1]}.* TO '{name}'@'%'")
    try:
        yield name, secret
    finally:
        with admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")


def test_a_password_comes_from_the_url_the_environment_or_the_option_file_and_never_shows(
    workspace, database, password_user
):
    user, secret = password_user
    plain = database.replace("root@", f"{user}@")
    home = workspace.root / "home"
    home.mkdir()
    workspace.env = {**workspace.env, "HOME": str(home)}

    workspace.db = plain
    (refused,), _ = workspace.run([request("migrate", 1)])
    assert refused["code"] == 11 and "Access denied" in refused["text"], refused

    (home / ".my.cnf").write_text(f"[client]\nuser = someone-else\npassword = \"{secret}\"\n")
    replies, completed = workspace.run([request("migrate", 1), request("health", 2)])
    assert replies[0].get("count") == 2, replies[0]  # the same worker, connecting again
    assert replies[1]["database"] == plain and secret not in completed.stdout.decode()
    with open(f"/proc/{replies[1]['worker_pid']}/cmdline", "rb") as cmdline:
        assert secret.encode() not in cmdline.read()
    (home / ".my.cnf").unlink()
    os.kill(worker_pid(workspace), signal.SIGKILL)  # its successor gets the URL's password

    workspace.db = database.replace("root@", f"{user}:{secret}@")
    replies, completed = workspace.run([request("status", 1), request("health", 2)])
    assert [m["applied"] for m in replies[0]["migrations"]] == [True, True]
    assert replies[1]["database"] == plain
    assert secret not in completed.stdout.decode() + completed.stderr.decode()
    with open(f"/proc/{replies[1]['worker_pid']}/cmdline", "rb") as cmdline:
        assert secret.encode() not in cmdline.read()
    workspace.db = database


def test_lint_says_its_rules_are_not_mariadbs(workspace, database, folder):
    table_migrations(folder, range(1, 2))
    (linted,) = run(workspace, folder, request("lint", 1))
    assert linted["ok"] is True and linted["findings"] == []
    assert "none of them applies to MariaDB and MySQL" in linted["note"]


def test_an_uncertain_refusal_lists_what_the_resent_migrate_applied_before(
    workspace, database, folder
):
    started = workspace.root / "started"
    table_migrations(folder, range(1, 2))
    (folder / "0002_slow.py").write_text(
        f"def up(db):\n    open({str(started)!r}, 'w').close()\n"
        "    db.execute('CREATE TABLE slow AS SELECT SLEEP(30) AS x')\n")
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="the slow statement to start")
    wait_until(lambda: query(database, "SELECT running FROM schema_migration_partials")
               == [(1,)], what="the step record before statement 1")
    os.kill(worker_pid(workspace), signal.SIGKILL)
    (refused,) = node.replies(1)
    assert refused["code"] == 22, refused
    assert refused["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert refused["partial"]["uncertain"]["statement"] == 1
    assert node.finish() == 0


def test_rollback_of_a_partial_migration_whose_file_is_gone_says_what_to_do(
    workspace, database, folder
):
    grow = folder / "0001_grow.sql"
    grow.write_text(THREE_DDL.format(third="ALTER TABLE nowhere ADD COLUMN c INT"))
    run(workspace, folder, request("migrate", 1))
    grow.unlink()
    refused, status = run(workspace, folder, request("rollback", 2), request("status", 3))
    assert refused["code"] == 22
    assert "stopped partway (see status) and its file is missing" in refused["text"]
    assert status["migrations"] == [{"version": 1, "name": "grow", "applied": False,
                                     "partial": {"action": "apply", "statements_done": 2}}]
