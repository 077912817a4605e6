"""A worker that stays responsive: reads beside a running write, health naming what runs,
cancel by request, and SQLite's journal mode (WAL for a new database). Real processes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.support import request, table_migrations, wait_until, write_migration


def blocking_migration(folder: Path, filename: str, started: Path, block: Path) -> None:
    """A migration that creates its table, says it started, waits while `block` exists,
    then writes a row through db (its next statement: where a cancel takes effect)."""
    table = Path(filename).stem.split("_", 1)[1]
    write_migration(
        folder, filename,
        f"import os, time\n"
        f"db.execute('CREATE TABLE {table} (id INTEGER)')\n"
        f"open({str(started)!r}, 'w').close()\n"
        f"while os.path.exists({str(block)!r}):\n"
        f"    time.sleep(0.01)\n"
        f"db.execute('INSERT INTO {table} VALUES (1)')",
        down=f"db.execute('DROP TABLE {table}')",
    )


def cancel_reached(workspace) -> bool:
    """The worker logged that it took a cancel (warnings reach its log at once)."""
    return any("cancelled 1 write(s)" in log.read_text(errors="replace")
               for log in workspace.runtime.glob("*.log"))


def entry(version: int, name: str, status: str = "applied") -> dict:
    return {"version": version, "name": name, "status": status}


def test_reads_from_another_node_are_answered_while_a_migration_runs(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    table_migrations(folder, range(1, 2))
    blocking_migration(folder, "0002_slow.py", started, block)
    writer = workspace.live("--migrations", str(folder))
    writer.send(request("migrate", 1, progress=False))
    wait_until(started.exists, what="migration 2 to start")

    reader = workspace.live("--migrations", str(folder))
    reader.send(request("status", 1), request("health", 2))
    status, health = reader.replies(2)
    assert [m["applied"] for m in status["migrations"]] == [True, False]
    running = health["running"]
    assert {k: running[k] for k in ("version", "name", "action", "done", "total")} == {
        "version": 2, "name": "slow", "action": "apply", "done": 1, "total": 2}
    assert running["since_s"] >= 0
    assert writer.no_more_replies()  # the write is still running

    block.unlink()
    assert writer.replies(1)[0]["migrations"] == [entry(1, "t1"), entry(2, "slow")]
    reader.send(request("health", 3))
    assert reader.replies(1)[0]["running"] is None
    assert writer.finish() == 0 and reader.finish() == 0


def test_reads_are_answered_while_a_thousand_quick_migrations_apply(workspace, folder):
    table_migrations(folder, range(1, 1001))
    writer = workspace.live("--migrations", str(folder))
    reader = workspace.live("--migrations", str(folder))
    reader.send(request("health", 0))
    reader.replies(1)  # the worker is up before the write starts
    writer.send(request("migrate", 1))
    seen_running, applied_counts, msg_id = [], [], 0
    while writer.no_more_replies():
        msg_id += 1
        reader.send(request("status", msg_id), request("health", msg_id + 1))
        status, health = reader.replies(2)
        msg_id += 1
        assert status["type"] == "migration_status", status
        flags = [m["applied"] for m in status["migrations"]]
        assert flags == sorted(flags, reverse=True)  # a committed state: 1..k applied
        applied_counts.append(sum(flags))
        if health["running"] is not None:
            seen_running.append(health["running"])
    migrated = writer.replies(1)[0]
    assert migrated["count"] == 1000
    assert seen_running, "no read was answered while the write ran"
    assert all(r["action"] == "apply" and r["total"] == 1000 for r in seen_running)
    assert applied_counts == sorted(applied_counts)  # each status a later committed state
    assert writer.finish() == 0 and reader.finish() == 0


def test_cancel_interrupts_a_long_sql_statement_and_nothing_after_it_starts(workspace, folder):
    table_migrations(folder, range(1, 2))
    (folder / "0002_endless.sql").write_text(
        "-- migrate:up\nCREATE TABLE endless (n INTEGER);\n"
        "INSERT INTO endless WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c)"
        " SELECT max(n) FROM c;\n"
        "-- migrate:down\nDROP TABLE endless;\n")
    table_migrations(folder, range(3, 4))
    node = workspace.live("--migrations", str(folder))
    watcher = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))

    def running_version() -> int | None:
        watcher.send(request("health", 1))
        running = watcher.replies(1)[0]["running"]
        return running and running["version"]

    wait_until(lambda: running_version() == 2, what="the endless statement to run")
    node.send(request("cancel", 2))
    migrate, cancel = node.replies(2)
    assert migrate["code"] == 14 and migrate["cancelled"] is True, migrate
    assert migrate["applied"] == [entry(1, "t1")]
    assert migrate["failed"] == {"version": 2, "name": "endless", "error": "cancelled"}
    assert cancel == {"type": "cancel_ok", "in_reply_to": 2, "cancelled": 1}
    assert workspace.recorded() == [(1, "t1")]
    assert "endless" not in workspace.tables() and "t3" not in workspace.tables()
    assert node.finish() == 0 and watcher.finish() == 0


def test_cancel_during_python_code_takes_effect_at_its_next_statement(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    table_migrations(folder, range(1, 2))
    blocking_migration(folder, "0002_sleepy.py", started, block)
    table_migrations(folder, range(3, 4))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="migration 2 to start")
    node.send(request("cancel", 2))
    # The cancel reaches the worker first; the migration notices at its next statement.
    wait_until(lambda: cancel_reached(workspace), what="the worker to take the cancel")
    block.unlink()
    migrate, cancel = node.replies(2)
    assert migrate["cancelled"] is True and migrate["applied"] == [entry(1, "t1")]
    assert migrate["failed"]["version"] == 2
    assert cancel["cancelled"] == 1
    assert workspace.recorded() == [(1, "t1")]
    assert "sleepy" not in workspace.tables()
    assert node.finish() == 0


def test_a_cancelled_request_resent_after_a_worker_kill_gets_the_same_reply(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    trigger = workspace.root / "crash-now"
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)
    block.touch()
    table_migrations(folder, range(1, 2))
    blocking_migration(folder, "0002_sleepy.py", started, block)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="migration 2 to start")
    # The next commit is the one that stores the cancelled reply: the worker dies right
    # after it, before replying, and the node sends the migrate again to a new worker.
    trigger.touch()
    node.send(request("cancel", 2))
    wait_until(lambda: cancel_reached(workspace), what="the worker to take the cancel")
    block.unlink()
    migrate, cancel = node.replies(2)
    assert migrate["cancelled"] is True and migrate["applied"] == [entry(1, "t1")], migrate
    assert cancel["cancelled"] == 1
    assert not trigger.exists()  # the hook fired
    node.send(request("health", 3), request("history", 4))
    health, history = node.replies(2)
    assert health["worker_restarts"] == 1
    assert [(e["version"], e["action"]) for e in history["events"]] == [(1, "apply")]
    assert workspace.recorded() == [(1, "t1")]
    assert node.finish() == 0


def journal_mode(db: Path) -> str:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


@pytest.mark.parametrize(
    ("existing", "options", "mode"),
    [(False, (), "wal"), (True, (), "delete"), (True, ("--wal",), "wal")],
    ids=["new database: WAL", "existing database: kept", "existing database: --wal"],
)
def test_journal_mode_and_a_kill_mid_commit(workspace, folder, existing, options, mode):
    if existing:
        with closing(sqlite3.connect(workspace.db)) as connection:
            connection.execute("CREATE TABLE theirs (id INTEGER)")
    table_migrations(folder, range(1, 4))
    trigger = workspace.root / "crash-now"
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)
    node = workspace.live("--migrations", str(folder), *options)
    node.send(request("migrate", 1, to=1), request("health", 2))
    _, health = node.replies(2)
    assert health["journal_mode"] == mode
    trigger.touch()  # the next commit (version 2) kills the worker before it replies
    node.send(request("migrate", 3), request("health", 4))
    migrated, after = node.replies(2)
    assert migrated["migrations"] == [entry(2, "t2"), entry(3, "t3")]
    assert after["worker_restarts"] == 1 and after["journal_mode"] == mode
    assert node.finish() == 0
    assert journal_mode(workspace.db) == mode
    assert workspace.recorded() == [(1, "t1"), (2, "t2"), (3, "t3")]
    with closing(sqlite3.connect(workspace.db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
