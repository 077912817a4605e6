"""Crash isolation: workers killed with real signals at chosen and random instants."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz import endpoint_of
from tests.processes import alive_owner, gone
from tests.support import (
    PROCESS_TIMEOUT_S,
    PROJECT,
    TRACKING_TABLES,
    blocking_migration,
    request,
    table_migrations,
    wait_until,
    write_migration,
)


def signal_during_slow_migrate(workspace, folder: Path, signum: int, started: Path,
                               block: Path):
    """Send migrate, signal the worker once the slow migration runs, then let it finish.

    Returns the node, the signalled worker's pid, and the migrate reply.
    """
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    wait_until(started.exists, what="the slow migration to start")
    signalled = workspace.kill_worker(signum)
    block.unlink()
    return node, signalled, node.replies(1)[0]


def migrated_node_with_crash_hook(workspace, folder: Path, count: int):
    """A live node whose `count` migrations are all applied, and the crash-after-commit trigger
    file its worker watches (touch it to make the next commit kill the worker)."""
    table_migrations(folder, range(1, count + 1))
    trigger = workspace.root / "crash-now"
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    assert node.replies(1)[0]["count"] == count
    return node, trigger


def test_worker_killed_inside_a_slow_migration_loses_nothing(workspace, folder):
    started, block = blocking_migration(folder, "0001_slow.py", "slow")
    table_migrations(folder, range(2, 4))
    node, killed, migrated = signal_during_slow_migrate(
        workspace, folder, signal.SIGKILL, started, block
    )
    node.send(request("health", 2))
    health = node.replies(1)[0]
    assert [m["version"] for m in migrated["migrations"]] == [1, 2, 3]
    assert health["worker_pid"] != killed and health["worker_restarts"] == 1
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "slow"), (2, "t2"), (3, "t3")]
    assert {"slow", "t2", "t3"} <= workspace.tables()


def test_a_killed_worker_has_logged_every_step_it_committed(workspace, folder):
    table_migrations(folder, range(1, 4))
    started, block = blocking_migration(folder, "0004_slow.py", "slow")
    node, killed, migrated = signal_during_slow_migrate(
        workspace, folder, signal.SIGKILL, started, block
    )
    assert [m["version"] for m in migrated["migrations"]] == [1, 2, 3, 4]
    assert node.finish() == 0
    log = endpoint_of(workspace).log_path.read_text()
    # Each line is written as its step commits, not held for the end of the request.
    assert [line.split(": ", 1)[1] for line in log.splitlines()
            if f"worker[{killed}] INFO worker.engine: applied" in line] == [
        "applied 1 t1", "applied 2 t2", "applied 3 t3"]


def test_kill_after_commit_before_reply_gives_the_stored_answer_and_runs_nothing_twice(
    workspace, folder
):
    node, trigger = migrated_node_with_crash_hook(workspace, folder, 3)
    trigger.touch()
    node.send(request("rollback", 2), request("health", 3), request("status", 4))
    rolled_back, health, status = node.replies(3)
    assert not trigger.exists(), "the worker consumed the trigger and died"
    assert rolled_back == {"type": "migration_rolled_back", "in_reply_to": 2, "version": 3,
                           "name": "t3"}
    assert health["worker_restarts"] == 1
    assert [m["applied"] for m in status["migrations"]] == [True, True, False]
    assert workspace.recorded() == [(1, "t1"), (2, "t2")]
    assert node.finish() == 0


def test_migrate_interrupted_after_a_commit_is_completed_and_reports_every_version_once(
    workspace, folder
):
    table_migrations(folder, range(1, 6))
    trigger = workspace.root / "crash-now"
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)
    trigger.touch()  # the first commit (version 1) kills the worker
    replies, completed = workspace.run([request("migrate", 1), request("health", 2)],
                                       "--migrations", str(folder))
    assert completed.returncode == 0
    assert [m["version"] for m in replies[0]["migrations"]] == [1, 2, 3, 4, 5]
    assert replies[0]["count"] == 5
    assert replies[1]["worker_restarts"] == 1
    assert [version for version, _ in workspace.recorded()] == [1, 2, 3, 4, 5]


def test_series_of_rollbacks_with_the_worker_killed_between_them(workspace, folder):
    table_migrations(folder, range(1, 7))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 0))
    assert node.replies(1)[0]["count"] == 6
    rng = random.Random(4)
    kills = 0
    for msg_id, version in enumerate(range(6, 0, -1), start=1):
        node.send(request("rollback", msg_id))
        time.sleep(rng.uniform(0, 0.01))  # fault injection at a random instant, not a wait
        kills += kill_live_worker(workspace)
        reply = node.replies(1)[0]
        assert reply == {"type": "migration_rolled_back", "in_reply_to": msg_id,
                         "version": version, "name": f"t{version}"}
        assert [v for v, _ in workspace.recorded()] == list(range(1, version))
    assert kills == 6, "every round killed a live worker"
    assert node.finish() == 0
    assert workspace.tables() <= TRACKING_TABLES


def kill_live_worker(workspace) -> int:
    """SIGKILL the database's worker once one runs (a restart may still be starting it);
    returns 1, the kill that landed, so that a test can count its kills."""
    wait_until(lambda: alive_owner(workspace.db) is not None, what="a live worker to kill")
    killed = workspace.kill_worker()
    assert killed is not None
    # Until it has gone, the lock file still names it as a live owner: the next round's
    # wait would find it, and its kill would come too late.
    wait_until(lambda: gone(killed), what=f"killed worker {killed} to go")
    return 1


def test_fifty_rounds_of_mixed_traffic_with_random_kills_stay_consistent(workspace, folder):
    table_migrations(folder, range(1, 5))
    node = workspace.live("--migrations", str(folder))
    rng = random.Random(2026)
    applied: list[int] = []  # the model: versions applied, in application order
    msg_id = 0
    kills = 0
    for _ in range(50):
        batch = []
        for _ in range(rng.randint(1, 6)):
            msg_id += 1
            batch.append(request(rng.choice(["migrate", "rollback", "rollback", "status"]),
                                 msg_id))
        node.send(*batch)
        time.sleep(rng.uniform(0, 0.03))  # fault injection at a random instant, not a wait
        kills += kill_live_worker(workspace)
        replies = node.replies(len(batch))
        assert [reply["in_reply_to"] for reply in replies] == [r["body"]["msg_id"] for r in batch]
        for sent, reply in zip(batch, replies, strict=True):
            apply_to_model(applied, sent["body"]["type"], reply)
        msg_id += 1
        node.send(request("status", msg_id))
        status = node.replies(1)[0]
        assert [m["version"] for m in status["migrations"] if m["applied"]] == sorted(applied)
        assert [v for v, _ in workspace.recorded()] == sorted(applied)
        assert {f"t{v}" for v in applied} == workspace.tables() & {"t1", "t2", "t3", "t4"}
    assert kills == 50, "every round killed a live worker"
    assert node.finish() == 0


def apply_to_model(applied: list[int], kind: str, reply: dict) -> None:
    """Check one reply against the model of what must have happened, and update the model."""
    if kind == "migrate":
        assert reply["type"] == "migrations_applied", reply
        versions = [m["version"] for m in reply["migrations"]]
        assert versions == sorted(set(range(1, 5)) - set(applied)), (reply, applied)
        applied.extend(versions)
    elif kind == "rollback" and applied:
        assert reply["type"] == "migration_rolled_back", reply
        assert reply["version"] == applied.pop(), reply
    elif kind == "rollback":
        assert reply["type"] == "error" and reply["code"] == 22, reply
    else:
        assert [m["version"] for m in reply["migrations"] if m["applied"]] == sorted(applied)


def test_a_migration_that_kills_its_worker_is_refused_after_three_deaths(workspace, folder):
    table_migrations(folder, range(1, 2))
    write_migration(folder, "0002_suicide.py",
                    'db.execute("CREATE TABLE suicide (id INTEGER)")\nimport os\nos._exit(1)')
    replies, completed = workspace.run(
        [request("migrate", 1), request("status", 2), request("health", 3)],
        "--migrations", str(folder),
    )
    assert completed.returncode == 0
    refused, status, health = replies
    assert refused["type"] == "error" and refused["code"] == 13
    assert "migration 2 suicide" in refused["text"] and "3 times" in refused["text"]
    assert [m["applied"] for m in status["migrations"]] == [True, False]
    assert health["worker_restarts"] == 3
    assert workspace.recorded() == [(1, "t1")]
    assert "suicide" not in workspace.tables()


def test_sigterm_during_a_slow_migration_finishes_it_answers_and_exits(workspace, folder):
    started, block = blocking_migration(folder, "0001_slow.py", "slow")
    node, stopped, migrated = signal_during_slow_migrate(
        workspace, folder, signal.SIGTERM, started, block
    )
    assert migrated["migrations"] == [{"version": 1, "name": "slow", "status": "applied"}]
    wait_until(lambda: gone(stopped), what="the stopped worker to exit")
    node.send(request("health", 2))
    health = node.replies(1)[0]
    assert health["worker_pid"] != stopped and health["worker_restarts"] == 1
    assert node.finish() == 0


def test_sigterm_between_migrations_stops_and_the_next_worker_completes_the_request(
    workspace, folder
):
    started, block = blocking_migration(folder, "0001_slow.py", "slow")
    table_migrations(folder, range(2, 4))
    node, stopped, migrated = signal_during_slow_migrate(
        workspace, folder, signal.SIGTERM, started, block
    )
    assert [m["version"] for m in migrated["migrations"]] == [1, 2, 3]
    wait_until(lambda: gone(stopped), what="the stopped worker to exit")
    assert node.finish() == 0


def test_a_killed_front_node_does_not_disturb_the_worker_or_other_nodes(workspace, folder):
    started, block = blocking_migration(folder, "0001_slow.py", "slow")
    first = workspace.live("--migrations", str(folder))
    first.send(request("health", 1))
    worker = first.replies(1)[0]["worker_pid"]
    first.send(request("migrate", 2))
    wait_until(started.exists, what="the slow migration to start")
    first.process.kill()
    block.unlink()
    second = workspace.live("--migrations", str(folder))
    second.send(request("status", 1), request("health", 2))
    status, health = second.replies(2)
    assert health["worker_pid"] == worker and health["worker_restarts"] == 0
    assert status["migrations"] == [{"version": 1, "name": "slow", "applied": True}]
    assert second.finish() == 0


def test_a_second_worker_for_the_same_database_refuses_and_says_why(workspace):
    command = [sys.executable, "-m", "worker", "--db", str(workspace.db)]
    owner = subprocess.Popen(command, cwd=PROJECT, env=workspace.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        wait_until(lambda: workspace.worker_pid() == owner.pid, what="the first worker's lock")
        second = subprocess.run(command, cwd=PROJECT, env=workspace.env, capture_output=True,
                                timeout=PROCESS_TIMEOUT_S)
        assert second.returncode == 75
        assert b"already owned" in second.stderr and str(owner.pid).encode() in second.stderr
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=PROCESS_TIMEOUT_S) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait(timeout=PROCESS_TIMEOUT_S)
        owner.stderr.close()


def test_a_worker_that_keeps_dying_at_start_up_gets_pending_requests_error_13(workspace):
    # sitecustomize runs in every Python process started with this PYTHONPATH: it kills
    # the worker (started as `python -m worker`) before it can serve, and spares the node.
    dying_at_start_up(workspace)
    replies, completed = workspace.run([request("status", 1), request("status", 2)])
    assert completed.returncode == 0
    assert [reply["code"] for reply in replies] == [13, 13]
    assert "keeps dying" in replies[0]["text"] and "; not run;" in replies[0]["text"]
    assert "it last logged: dying at start-up on purpose" in replies[0]["text"]


def test_a_request_answered_not_run_never_runs_when_a_worker_comes_at_last(workspace, folder):
    table_migrations(folder, range(1, 3))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    assert node.replies(1)[0]["count"] == 2
    pid = workspace.kill_worker()
    wait_until(lambda: gone(pid), what="the worker to die")
    armed = dying_at_start_up(workspace)
    node = workspace.live("--migrations", str(folder))  # its workers inherit the hook
    node.send(request("rollback", 2))
    refused = node.replies(1)[0]
    assert refused["code"] == 13 and "; not run" in refused["text"]
    armed.unlink()
    node.send(request("status", 3), request("rollback", 4))
    status, rolled_back = node.replies(2)
    assert [m["applied"] for m in status["migrations"]] == [True, True]
    assert rolled_back["type"] == "migration_rolled_back" and rolled_back["version"] == 2
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1")]


def dying_at_start_up(workspace) -> Path:
    """Make every worker started from now on die at start-up, while the returned file exists.

    sitecustomize runs in every Python process started with this PYTHONPATH: it kills the
    worker (started as `python -m worker`) before it can serve, and spares the node.
    """
    hooks = workspace.root / "hooks"
    hooks.mkdir()
    armed = workspace.root / "dying"
    armed.touch()
    (hooks / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"if sys.argv[:1] == ['-m'] and os.path.exists({str(armed)!r}):\n"
        "    print('dying at start-up on purpose', file=sys.stderr, flush=True)\n"
        "    os._exit(3)\n"
    )
    workspace.env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(PROJECT)])
    return armed


def test_a_long_migration_is_not_mistaken_for_a_dead_worker(workspace, folder):
    started, block = blocking_migration(folder, "0001_slow.py", "slow")
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1), request("health", 2))
    wait_until(started.exists, what="the slow migration to start")
    # Let the node check its worker's liveness many times (each check is a wake-up of its
    # poll, a voluntary context switch) while the migration runs.
    woken = wake_ups(node.process.pid)
    wait_until(lambda: wake_ups(node.process.pid) >= woken + 20, what="20 liveness checks")
    block.unlink()
    migrated, health = node.replies(2)
    assert migrated["count"] == 1 and health["worker_restarts"] == 0
    assert node.finish() == 0


def wake_ups(pid: int) -> int:
    """How often the process's main thread has gone to sleep and woken up again."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc status")


def test_a_read_resent_after_a_crash_still_sees_the_state_before_a_later_write(
    workspace, folder
):
    node, trigger = migrated_node_with_crash_hook(workspace, folder, 2)
    trigger.touch()  # the rollback's commit kills the worker before it answers anything
    node.send(request("status", 2), request("rollback", 3))
    status, rolled_back = node.replies(2)
    assert [m["applied"] for m in status["migrations"]] == [True, True]
    assert rolled_back["type"] == "migration_rolled_back" and rolled_back["version"] == 2
    assert not trigger.exists()
    assert node.finish() == 0
