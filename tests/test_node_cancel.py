"""Progress lines, cancel requests and stop signals, through real node and worker processes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    PROCESS_TIMEOUT_S,
    request,
    table_migrations,
    wait_for_stderr,
    wait_until,
    write_migration,
)

# Migration code runs statements through `db` until the test is done with it: a cancel
# takes effect at the next statement. The table shows whether its rollback happened.
CANCELLABLE_UP = """
import os, time
db.execute("CREATE TABLE slow (id INTEGER)")
open({started!r}, "w").close()
while os.path.exists({block!r}):
    db.execute("SELECT 1")
    time.sleep(0.01)
"""
# Python code with no statement: nothing can stop it until the test removes the block.
UNSTOPPABLE_UP = """
import os, time
open({started!r}, "w").close()
while os.path.exists({block!r}):
    time.sleep(0.01)
"""


@pytest.fixture
def block(workspace) -> Iterator[Path]:
    """A file the slow migrations wait on while it exists; removed when the test ends, so
    that no worker runs on until teardown."""
    path = workspace.root / "block"
    path.touch()
    yield path
    path.unlink(missing_ok=True)


def slow_second_migration(workspace, folder: Path, block: Path, up: str) -> Path:
    """Version 1 creates t1; version 2 (`slow`) runs `up` while `block` exists. Returns the
    file version 2 creates once it runs."""
    started = workspace.root / "started"
    table_migrations(folder, range(1, 2))
    write_migration(folder, "0002_slow.py", up.format(started=str(started), block=str(block)),
                    down='db.execute("DROP TABLE slow")')
    return started


def cancelled_running(reply: dict, msg_id: int) -> bool:
    """The reply to a write stopped while version 2 ran, after version 1 committed."""
    return (reply["type"], reply["in_reply_to"], reply["code"], reply["cancelled"]) == (
        "error", msg_id, 14, True) and reply["failed"] == {
        "version": 2, "name": "slow", "error": "cancelled"} and reply["applied"] == [
        {"version": 1, "name": "t1", "status": "applied"}]


def cancelled_queued(reply: dict, msg_id: int) -> bool:
    """The reply to a write cancelled before it started."""
    return (reply["type"], reply["in_reply_to"], reply["code"], reply["cancelled"],
            reply["applied"]) == ("error", msg_id, 14, True, [])


# -- progress ----------------------------------------------------------------------------


def test_progress_lines_come_one_per_migration_before_the_reply(workspace, folder):
    table_migrations(folder, range(1, 4))
    replies, completed = workspace.run(
        [request("migrate", 1, progress=True), request("rollback", 2, steps=2, progress=True)],
        "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    assert replies[:3] == [
        {"type": "migration_progress", "in_reply_to": 1, "done": done, "total": 3,
         "version": done, "name": f"t{done}", "status": "applied"}
        for done in (1, 2, 3)]
    assert replies[3]["type"] == "migrations_applied" and replies[3]["count"] == 3
    assert replies[4:6] == [
        {"type": "migration_progress", "in_reply_to": 2, "done": done, "total": 2,
         "version": version, "name": f"t{version}", "status": "rolled_back"}
        for done, version in ((1, 3), (2, 2))]
    assert replies[6]["type"] == "migrations_rolled_back" and len(replies) == 7


def test_without_the_flag_each_request_gets_exactly_one_line(workspace, folder):
    table_migrations(folder, range(1, 4))
    replies, completed = workspace.run(
        [request("migrate", 1), request("rollback", 2, steps=2), request("status", 3)],
        "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    assert [(reply["type"], reply["in_reply_to"]) for reply in replies] == [
        ("migrations_applied", 1), ("migrations_rolled_back", 2), ("migration_status", 3)]


# -- cancel ------------------------------------------------------------------------------


def test_a_cancel_with_nothing_in_flight_is_answered_cancelled_0(workspace, folder):
    table_migrations(folder, range(1, 3))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    assert node.replies(1)[0]["count"] == 2
    node.send(request("cancel", 2), request("status", 3))
    cancel, status = node.replies(2)
    assert cancel == {"type": "cancel_ok", "in_reply_to": 2, "cancelled": 0}
    assert [m["applied"] for m in status["migrations"]] == [True, True]
    assert node.finish() == 0


def test_a_cancel_stops_the_running_write_and_the_one_queued_behind_it(workspace, folder,
                                                                       block):
    started = slow_second_migration(workspace, folder, block, CANCELLABLE_UP)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, timeout=PROCESS_TIMEOUT_S, what="the slow migration to start")
    node.send(request("migrate", 2), request("cancel", 3), request("status", 4))
    running, queued, cancel, status = node.replies(4)
    assert cancelled_running(running, 1), running
    assert cancelled_queued(queued, 2), queued
    assert cancel == {"type": "cancel_ok", "in_reply_to": 3, "cancelled": 2}
    assert [m["applied"] for m in status["migrations"]] == [True, False]
    assert workspace.recorded() == [(1, "t1")] and "slow" not in workspace.tables()
    assert node.finish() == 0


# -- signals -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_migrate_cancels_writes_everything_and_exits_128_plus_it(
        workspace, folder, block, signum):
    started = slow_second_migration(workspace, folder, block, CANCELLABLE_UP)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1), request("migrate", 2))  # one write: read together
    wait_until(started.exists, timeout=PROCESS_TIMEOUT_S, what="the slow migration to start")
    node.process.send_signal(signum)
    assert node.process.wait(timeout=PROCESS_TIMEOUT_S) == 128 + signum
    running, queued = node.replies(2)
    assert cancelled_running(running, 1), running
    assert cancelled_queued(queued, 2), queued
    applied = [(m["version"], m["name"]) for m in running["applied"]]
    assert workspace.recorded() == applied and "slow" not in workspace.tables()
    assert node.finish() == 128 + signum and node.received == 2


def test_a_second_sigint_stops_the_node_at_once(workspace, folder, block):
    started = slow_second_migration(workspace, folder, block, UNSTOPPABLE_UP)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, timeout=PROCESS_TIMEOUT_S, what="the slow migration to start")
    node.process.send_signal(signal.SIGINT)
    wait_for_stderr(node.process, b"a second signal stops at once")
    node.process.send_signal(signal.SIGINT)
    assert node.process.wait(timeout=PROCESS_TIMEOUT_S) == 128 + signal.SIGINT
    assert node.finish() == 128 + signal.SIGINT and node.received == 0
    assert block.exists(), "the migration still runs: the node did not wait for it"
