"""Lock timeouts with retries, and who blocks us, on the machine's PostgreSQL server.

Real sessions hold real locks: a psycopg session of the test opens a transaction on a table
and keeps it open (idle in transaction, as a forgotten application session does), and the
node's migration must wait for it without stopping everybody else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support import PROCESS_TIMEOUT_S, request, wait_until, write_migration
from tests.test_postgres_node import database  # noqa: F401 (a fixture)

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install .[test])")

ADD_COLUMN = 'db.execute("ALTER TABLE accounts ADD COLUMN note text")'
SEEN_TIMEOUT = (
    "db.execute(\"CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS value\")"
)


@pytest.fixture
def accounts(database) -> str:  # noqa: F811 (the fixture imported above)
    """The database, with a table `accounts` of a few rows."""
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
        connection.execute("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100) g")
    return database


@pytest.fixture
def blocker(accounts) -> Iterator[psycopg.Connection]:
    """A session idle in a transaction that has read `accounts` (it holds ACCESS SHARE)."""
    connection = psycopg.connect(accounts)
    connection.execute("SELECT count(*) FROM accounts").fetchone()
    try:
        yield connection
    finally:
        connection.close()


def history(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT version, action FROM schema_migration_history ORDER BY seq").fetchall()


def columns(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            (table,)).fetchall()
    return {name for (name,) in rows}


def next_reply(node, kind: str) -> dict:
    """The node's next reply, which must be of type `kind`."""
    (reply,) = node.replies(1)
    assert reply["type"] == kind, reply
    return reply


def test_a_migration_blocked_by_an_open_transaction_is_tried_again_and_others_go_on_meanwhile(
        workspace, folder, accounts, blocker):
    write_migration(folder, "0001_add_note.py", ADD_COLUMN)
    node = workspace.live("--migrations", str(folder), "--lock-timeout", "0.5",
                          "--lock-retries", "100")
    node.send(request("migrate", 1, progress=True))

    waiting = next_reply(node, "migration_waiting")
    retrying = next_reply(node, "migration_waiting")

    assert (waiting["event"], waiting["attempt"]) == ("waiting", 1)
    assert (retrying["event"], retrying["attempt"]) == ("retrying", 2)
    for body in (waiting, retrying):
        assert (body["version"], body["relation"], body["mode"]) == (
            1, "public.accounts", "AccessExclusiveLock")
        (held_by,) = body["blockers"]
        assert held_by["pid"] == blocker.info.backend_pid
        assert held_by["state"] == "idle in transaction"
        assert held_by["query"].startswith("SELECT count(*) FROM accounts")
    assert "waiting for ACCESS EXCLUSIVE on public.accounts: pid" in waiting["text"]
    # While the migration keeps trying, a third session's query on the table is not stuck
    # behind it (it would wait for the blocker's whole transaction otherwise; the statement
    # timeout only turns such a hang into a failure).
    with psycopg.connect(accounts, autocommit=True) as reader:
        reader.execute(f"SET statement_timeout = '{PROCESS_TIMEOUT_S}s'")
        assert reader.execute("SELECT count(*) FROM accounts").fetchone() == (100,)
    assert node.no_more_replies() or node.replies(1)[0]["type"] == "migration_waiting"
    blocker.commit()

    reply = None
    while reply is None or reply["type"] == "migration_waiting":
        (reply,) = node.replies(1)
    if reply["type"] == "migration_progress":
        (reply,) = node.replies(1)
    assert reply["type"] == "migrations_applied", reply
    assert "note" in columns(accounts, "accounts")
    actions = [action for _, action in history(accounts)]
    assert actions[-1] == "apply"
    assert set(actions[:-1]) == {"lock_timeout"} and len(actions) >= 2


def test_a_migration_that_never_gets_its_lock_gives_up_naming_the_table_mode_and_holder(
        workspace, folder, accounts, blocker):
    write_migration(folder, "0001_add_note.py", ADD_COLUMN)

    replies, _ = workspace.run([request("migrate", 1)], "--migrations", str(folder),
                               "--lock-timeout", "1", "--lock-retries", "1")

    (reply,) = replies
    assert (reply["type"], reply["code"]) == ("error", 11), reply
    text = reply["text"]
    assert text.startswith("migration 1 add_note gave up after 2 tries: a statement waited 1 s"
                           " (its lock timeout) for ACCESS EXCLUSIVE on public.accounts:"
                           f" pid {blocker.info.backend_pid} idle in transaction for ")
    assert "(query 'SELECT count(*) FROM accounts')" in text
    assert text.endswith("each try was rolled back, so it is not applied;"
                         " try again once that session has finished")
    assert "note" not in columns(accounts, "accounts")
    assert history(accounts) == [(1, "lock_timeout"), (1, "lock_timeout")]


def test_health_shows_what_a_migration_without_a_lock_timeout_waits_for(
        workspace, folder, accounts, blocker):
    write_migration(folder, "0001_add_note.py", f"{ADD_COLUMN}\n", down="pass")
    source = (folder / "0001_add_note.py").read_text()
    (folder / "0001_add_note.py").write_text("LOCK_TIMEOUT = 0  # must wait\n" + source)
    node = workspace.live("--migrations", str(folder), "--lock-timeout", "0.05")
    node.send(request("migrate", 1, progress=True))
    waiting = next_reply(node, "migration_waiting")
    assert waiting["event"] == "waiting"

    # Another node asks: replies come in request order, and the migrate's is still to come.
    watcher = workspace.live("--migrations", str(folder))
    watcher.send(request("health", 1))
    (health,) = watcher.replies(1)

    running = health["running"]
    assert (running["version"], running["attempt"]) == (1, 1)
    assert running["waiting"]["relation"] == "public.accounts"
    assert running["waiting"]["mode"] == "AccessExclusiveLock"
    assert [b["pid"] for b in running["waiting"]["blockers"]] == [blocker.info.backend_pid]
    assert running["waiting"]["blockers"][0]["transaction_s"] > 0
    blocker.commit()
    replies = node.replies(2)
    assert [r["type"] for r in replies] == ["migration_progress", "migrations_applied"]
    assert history(accounts) == [(1, "apply")]  # waited, never timed out


def test_the_tracking_tables_are_not_held_to_the_migrations_lock_timeout(
        workspace, folder, accounts):
    write_migration(folder, "0001_a.py", "db.execute('CREATE TABLE a (id int)')")
    write_migration(folder, "0002_b.py", "db.execute('CREATE TABLE b (id int)')")
    workspace.run([request("migrate", 1, to=1)], "--migrations", str(folder))
    holder = psycopg.connect(accounts)
    holder.execute("LOCK TABLE schema_migrations IN SHARE MODE")
    try:
        node = workspace.live("--migrations", str(folder), "--lock-timeout", "0.001")
        node.send(request("migrate", 1))
        with psycopg.connect(accounts, autocommit=True) as watcher:
            # The worker waits to record migration 2, far longer than its 1 ms.
            wait_until(lambda: watcher.execute(
                "SELECT 1 FROM pg_locks WHERE NOT granted"
                " AND relation = 'schema_migrations'::regclass").fetchone() is not None,
                timeout=PROCESS_TIMEOUT_S, what="the worker to wait for the tracking table")
        holder.commit()
        assert next_reply(node, "migrations_applied")["count"] == 1
    finally:
        holder.close()
    assert history(accounts) == [(1, "apply"), (2, "apply")]


@pytest.mark.parametrize(("url_options", "args", "marker", "seen"), [
    ("", (), "", "3s"),
    ("lock_timeout%3D7s", (), "", "7s"),
    ("lock_timeout%3D7s", ("--lock-timeout", "0.5"), "", "500ms"),
    ("", ("--lock-timeout", "0"), "", "0"),
    ("", ("--lock-timeout", "2"), " lock_timeout:0", "0"),
    ("", (), " lock_timeout:1.5", "1500ms"),
])
def test_a_migrations_lock_timeout_comes_from_its_marker_the_option_the_url_or_the_default(
        workspace, folder, accounts, url_options, args, marker, seen):
    (folder / "0001_seen.sql").write_text(
        f"-- migrate:up{marker}\n"
        "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS value;\n")
    if url_options:
        workspace.db = f"{accounts}?options=-c%20{url_options}"

    replies, _ = workspace.run([request("migrate", 1)], "--migrations", str(folder), *args)

    assert replies[0]["type"] == "migrations_applied", replies
    with psycopg.connect(accounts) as connection:
        assert connection.execute("SELECT value FROM seen").fetchone() == (seen,)


def test_the_project_file_sets_the_lock_timeout_and_beats_the_url(workspace, folder, accounts):
    (workspace.root / "pyproject.toml").write_text(
        '[tool.migrations-node]\nlock-timeout = 0.25\nlock-retries = 2\n')
    (folder / "0001_seen.sql").write_text(
        "-- migrate:up\n"
        "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS value;\n")
    workspace.db = f"{accounts}?options=-c%20lock_timeout%3D7s"

    replies, _ = workspace.run([request("migrate", 1)], "--migrations", str(folder))

    assert replies[0]["type"] == "migrations_applied", replies
    with psycopg.connect(accounts) as connection:
        assert connection.execute("SELECT value FROM seen").fetchone() == ("250ms",)


def test_the_session_setting_a_migration_leaves_is_not_the_next_ones(
        workspace, folder, accounts):
    write_migration(folder, "0001_a.py", "db.execute(\"SET lock_timeout = '42s'\")")
    write_migration(folder, "0002_seen.py", SEEN_TIMEOUT)

    replies, _ = workspace.run([request("migrate", 1)], "--migrations", str(folder))

    assert replies[0]["type"] == "migrations_applied", replies
    with psycopg.connect(accounts) as connection:
        assert connection.execute("SELECT value FROM seen").fetchone() == ("3s",)


def test_the_command_line_says_what_a_migration_waits_for(workspace, folder, accounts, blocker):
    write_migration(folder, "0001_add_note.py", ADD_COLUMN)

    _, completed = workspace.run(b"", "migrate", "--migrations", str(folder),
                                 "--lock-timeout", "1", "--lock-retries", "1")

    said = completed.stderr.decode()
    pid = blocker.info.backend_pid
    assert completed.returncode == 3, said
    assert (f"1 add_note is waiting for ACCESS EXCLUSIVE on public.accounts: pid {pid}"
            " idle in transaction for ") in said
    assert (f"1 add_note gave up waiting for ACCESS EXCLUSIVE on public.accounts: pid {pid}"
            " idle in transaction for ") in said
    assert "try 2 of 2 in " in said


def test_the_lock_options_are_accepted_and_change_nothing_on_sqlite(workspace, folder):
    write_migration(folder, "0001_a.py", "db.execute('CREATE TABLE a (id INTEGER)')")

    replies, completed = workspace.run([request("migrate", 1)], "--migrations", str(folder),
                                       "--lock-timeout", "0.5", "--lock-retries", "0")

    assert replies[0]["type"] == "migrations_applied", completed.stderr
    assert json.dumps(replies[0]) == json.dumps({
        "type": "migrations_applied", "in_reply_to": 1, "count": 1,
        "migrations": [{"version": 1, "name": "a", "status": "applied"}]})


def test_a_cancel_while_a_migration_waits_to_be_tried_again_ends_it_at_once(
        workspace, folder, accounts, blocker):
    write_migration(folder, "0001_add_note.py", ADD_COLUMN)
    node = workspace.live("--migrations", str(folder), "--lock-timeout", "0.2",
                          "--lock-retries", "1000")
    node.send(request("migrate", 1, progress=True))
    while next_reply(node, "migration_waiting")["event"] != "retrying":
        pass

    node.send(request("cancel", 2))

    reply = None
    while reply is None or reply["type"] == "migration_waiting":
        (reply,) = node.replies(1)
    assert (reply["code"], reply["cancelled"]) == (14, True), reply
    assert reply["failed"] == {"version": 1, "name": "add_note", "error": "cancelled"}
    assert next_reply(node, "cancel_ok")["cancelled"] == 1
    assert "note" not in columns(accounts, "accounts")
    assert {action for _, action in history(accounts)} == {"lock_timeout"}
