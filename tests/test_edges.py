"""Defects found at the edges (issue 19), each reproduced with real processes: a cancel that
must hold across a worker's death, a slow reader, an owner nobody can reach, a restore."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest
import zmq

from broker import codec, endpoint
from tests.processes import gone
from tests.support import (
    PROCESS_TIMEOUT_S,
    blocking_migration,
    request,
    table_migrations,
    wait_for_stderr,
    wait_until,
)

# -- 2. an acknowledged cancel holds across a worker's death --------------------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_write_whose_cancel_was_acknowledged_never_runs_after_the_worker_dies(
        workspace, folder, signum):
    started, block = blocking_migration(folder, "0001_t1.py", "t1")
    table_migrations(folder, range(2, 4))
    runner = workspace.live("--migrations", str(folder))
    runner.send(request("migrate", 1, to=1))
    wait_until(started.exists, timeout=PROCESS_TIMEOUT_S, what="the slow migration to start")
    canceller = workspace.live("--migrations", str(folder), "--log-level", "DEBUG")
    canceller.send(request("migrate", 1))
    wait_for_stderr(canceller.process, b"sent migrate")  # so the worker queues it
    canceller.send(request("cancel", 2))
    # The node has the worker's cancel_ok (its reply waits behind the migrate's, in order).
    wait_for_stderr(canceller.process, b"the worker took the cancel of write")
    workspace.kill_worker(signum)
    block.unlink()

    assert runner.replies(1)[0]["type"] == "migrations_applied"
    migrate, cancel = canceller.replies(2)
    assert migrate == {"type": "error", "in_reply_to": 1, "code": 14,
                       "text": "cancelled before it started, so nothing ran",
                       "cancelled": True, "applied": []}, migrate
    assert cancel == {"type": "cancel_ok", "in_reply_to": 2, "cancelled": 1}
    assert workspace.recorded() == [(1, "t1")]
    assert not {"t2", "t3"} & workspace.tables()
    # Asked again, from anywhere, it still never runs: its reply was stored.
    assert runner.finish() == 0 and canceller.finish() == 0


def test_a_running_write_whose_cancel_was_acknowledged_is_not_run_again_by_the_next_worker(
        workspace, folder):
    """The cancel reached the write while its Python code ran (no statement to interrupt);
    the worker died before answering: the next worker must not start it again."""
    started, block = blocking_migration(folder, "0001_t1.py", "t1")
    table_migrations(folder, range(2, 4))
    node = workspace.live("--migrations", str(folder), "--log-level", "DEBUG")
    node.send(request("migrate", 1))
    wait_until(started.exists, timeout=PROCESS_TIMEOUT_S, what="the slow migration to start")
    node.send(request("cancel", 2))
    wait_for_stderr(node.process, b"the worker took the cancel of write")
    workspace.kill_worker(signal.SIGKILL)
    block.unlink()

    migrate, cancel = node.replies(2)
    assert migrate == {"type": "error", "in_reply_to": 1, "code": 14,
                       "text": "cancelled before it started, so nothing ran",
                       "cancelled": True, "applied": []}, migrate
    assert cancel == {"type": "cancel_ok", "in_reply_to": 2, "cancelled": 1}
    assert workspace.recorded() == []
    assert node.finish() == 0


# -- 3. a slow reader slows progress lines, never loses the reply ---------------------------


def test_a_reader_that_reads_nothing_until_the_end_still_gets_every_progress_line_and_the_reply(
        workspace, folder):
    """More progress messages than ZeroMQ's queues hold (1,000 each way): the worker must
    hold them for the node, not drop them, and the node must exit once all are written."""
    count = 4000
    table_migrations(folder, range(1, count + 1))
    node = workspace.start("--migrations", str(folder))
    node.stdin.write(b'{"body": {"type": "migrate", "msg_id": 1, "progress": true}}\n')
    node.stdin.close()
    # Nothing is read from the node until every migration has committed.
    wait_until(lambda: workspace.db.exists() and len(recorded_now(workspace)) == count,
               timeout=PROCESS_TIMEOUT_S * 4, what="every migration to commit")
    lines = read_to_end(node.stdout, PROCESS_TIMEOUT_S).splitlines()
    assert node.wait(timeout=PROCESS_TIMEOUT_S) == 0
    replies = [json.loads(line) for line in lines]
    assert [reply.get("done") for reply in replies[:-1]] == list(range(1, count + 1))
    assert replies[-1]["type"] == "migrations_applied" and replies[-1]["count"] == count
    assert len(replies) == count + 1


def read_to_end(pipe, timeout: float) -> bytes:
    """Everything a pipe holds until it closes; fails the test if it stays open longer."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
            lines = data.count(b"\n")
            pytest.fail(f"the pipe stayed open for {timeout} s; it gave {lines} lines")
        chunk = os.read(pipe.fileno(), 1 << 16)
        if not chunk:
            return data
        data += chunk


def recorded_now(workspace) -> list:
    try:
        return workspace.recorded()
    except sqlite3.OperationalError:  # no tracking table yet
        return []


# -- 4. an owner this node cannot reach is named within the promised time ------------------


def test_a_node_that_cannot_reach_the_owner_says_who_owns_it_and_how_to_reach_it(
        workspace, folder, tmp_path_factory):
    """cron and sudo see another runtime directory: the worker that owns the database serves
    a socket this node never looks at. Error 13 must come, naming the owner and its address,
    instead of workers respawned forever."""
    table_migrations(folder, range(1, 3))
    owner_node = workspace.live("--migrations", str(folder))
    owner_node.send(request("health", 1))
    health = owner_node.replies(1)[0]

    elsewhere = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    try:
        env = {**workspace.env, "MIGRATIONS_RUNTIME_DIR": str(elsewhere)}
        replies = subprocess.run(workspace.node_command("--migrations", str(folder)),
                                 input=json.dumps(request("status", 7)).encode() + b"\n",
                                 capture_output=True, env=env, timeout=PROCESS_TIMEOUT_S)
        assert replies.returncode == 0, replies.stderr
        [reply] = [json.loads(line) for line in replies.stdout.splitlines()]
        assert reply["type"] == "error" and reply["code"] == 13, reply
        assert f"owned by worker pid {health['worker_pid']}" in reply["text"], reply
        assert f"--connect {health['endpoint']}" in reply["text"], reply

        command = subprocess.run(workspace.node_command("--migrations", str(folder), "status"),
                                 capture_output=True, env=env, timeout=PROCESS_TIMEOUT_S)
        assert command.returncode == 3, command
        assert f"--connect {health['endpoint']}".encode() in command.stderr

        # What the text says works.
        reached = subprocess.run(
            workspace.node_command("--migrations", str(folder), "--connect", health["endpoint"]),
            input=json.dumps(request("status", 8)).encode() + b"\n",
            capture_output=True, env=env, timeout=PROCESS_TIMEOUT_S)
        assert json.loads(reached.stdout)["type"] == "migration_status", reached
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert owner_node.finish() == 0


# -- 8. a backup restored over the file in place --------------------------------------------


def test_a_backup_copied_over_the_database_in_place_is_noticed_and_served_as_restored(
        workspace, folder):
    table_migrations(folder, range(1, 4))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1, to=2))
    assert node.replies(1)[0]["count"] == 2
    backup = workspace.root / "backup.db"
    with closing(sqlite3.connect(workspace.db)) as source, \
            closing(sqlite3.connect(backup)) as copy:
        source.backup(copy)
    node.send(request("migrate", 2))
    assert node.replies(1)[0]["count"] == 1
    wal = Path(f"{workspace.db}-wal")
    # The worker empties its log once a write is answered; a copy before that would lay
    # over pages SQLite still holds, which no program could make safe.
    wait_until(lambda: not wal.exists() or wal.stat().st_size == 0,
               what="the worker to fold its write-ahead log into the file")
    inode = workspace.db.stat().st_ino
    shutil.copyfile(backup, workspace.db)  # in place: the same inode, as `cp` does
    assert workspace.db.stat().st_ino == inode

    node.send(request("status", 3))
    status = node.replies(1)[0]
    assert [m["applied"] for m in status["migrations"]] == [True, True, False], status
    node.send(request("migrate", 4))
    assert node.replies(1)[0]["migrations"] == [
        {"version": 3, "name": "t3", "status": "applied"}]
    assert node.finish() == 0
    with closing(sqlite3.connect(workspace.db)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert workspace.recorded() == [(1, "t1"), (2, "t2"), (3, "t3")]


# -- 1. a worker refuses a request meant for another database ------------------------------


def test_a_worker_refuses_a_request_that_names_another_database(workspace, folder):
    """Defence in depth behind the endpoint's name: each request names the database its
    node means, and a worker serving another one runs nothing for it."""
    table_migrations(folder, range(1, 3))
    node = workspace.live("--migrations", str(folder))
    node.send(request("health", 1))
    health = node.replies(1)[0]
    mine = endpoint.for_database(workspace.db).target
    assert mine == str(workspace.db.resolve())
    other = str(workspace.root / "other.db")
    with zmq.Context() as context, context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(health["endpoint"])
        dealer.send_multipart([
            codec.pack_request(b"r-other", "migrate", None, "t", other),
            codec.pack_request(b"r-mine", "status", None, "t", mine),
        ])
        assert dealer.poll(PROCESS_TIMEOUT_S * 1000), "the worker answered"
        frames = dealer.recv_multipart()
    (first_id, refused), (second_id, status) = (
        codec.unpack_reply(frames[i:i + 2]) for i in (0, 2))
    assert (first_id, refused["type"], refused["code"]) == (b"r-other", "error", 13)
    assert f"serves {mine}, not {other}" in refused["text"], refused
    assert (second_id, status["type"]) == (b"r-mine", "migration_status")
    assert "schema_migrations" not in workspace.tables()  # the refused migrate never ran
    assert node.finish() == 0


def test_stop_ends_the_worker_cleanly_so_that_a_backup_can_be_copied_over_the_file(
        workspace, folder):
    table_migrations(folder, range(1, 4))
    migrated, _ = workspace.run([request("migrate", 1, to=1)], "--migrations", str(folder))
    assert migrated[0]["count"] == 1
    backup = workspace.root / "backup.db"
    with closing(sqlite3.connect(workspace.db)) as source, \
            closing(sqlite3.connect(backup)) as copy:
        source.backup(copy)
    workspace.run([request("migrate", 2)], "--migrations", str(folder))
    owner = workspace.worker_pid()
    assert owner is not None and not gone(owner)

    stopped = subprocess.run(workspace.node_command("stop"), capture_output=True,
                             env=workspace.env, timeout=PROCESS_TIMEOUT_S)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.decode() == (
        f"stopped worker pid {owner} of {workspace.db.resolve()}\n")
    assert gone(owner)
    again = subprocess.run(workspace.node_command("stop"), capture_output=True,
                           env=workspace.env, timeout=PROCESS_TIMEOUT_S)
    assert (again.returncode, again.stdout.decode()) == (
        0, f"no worker runs for {workspace.db.resolve()}\n")

    for leftover in ("-wal", "-shm"):  # the worker that stopped folded them into the file
        assert not Path(f"{workspace.db}{leftover}").exists()
    shutil.copyfile(backup, workspace.db)
    replies, _ = workspace.run([request("status", 1)], "--migrations", str(folder))
    assert [m["applied"] for m in replies[0]["migrations"]] == [True, False, False]
