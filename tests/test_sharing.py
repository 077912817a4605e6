"""Many front nodes, one worker: local sharing, remote nodes over TCP with CurveZMQ keys."""

from __future__ import annotations

import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zmq

from broker import endpoint
from tests.processes import gone
from tests.support import (
    PROCESS_TIMEOUT_S,
    PROJECT,
    TRACKING_TABLES,
    free_port,
    request,
    table_migrations,
    wait_until,
)


@pytest.fixture
def folder(workspace) -> Path:
    path = workspace.root / "migrations"
    path.mkdir()
    table_migrations(path, range(1, 9))
    return path


def test_eight_nodes_cold_started_at_once_share_one_worker_and_apply_each_migration_once(
    workspace, folder
):
    nodes = [workspace.live("--migrations", str(folder)) for _ in range(8)]
    for node in nodes:
        node.send(request("migrate", 1), request("health", 2))
    replies = [node.replies(2) for node in nodes]
    assert len({health["worker_pid"] for _, health in replies}) == 1
    applied = [m["version"] for migrated, _ in replies for m in migrated["migrations"]]
    assert sorted(applied) == list(range(1, 9)), "each migration in exactly one reply"
    assert all(migrated["type"] == "migrations_applied" for migrated, _ in replies)
    assert all(node.finish() == 0 for node in nodes)
    assert [v for v, _ in workspace.recorded()] == list(range(1, 9))


def test_eight_nodes_with_mixed_traffic_apply_and_revert_each_migration_exactly_once(
    workspace, folder
):
    rng = random.Random(8)
    nodes = [workspace.live("--migrations", str(folder)) for _ in range(8)]
    sent = []
    for node in nodes:
        kinds = [rng.choice(["migrate", "rollback", "status", "health"]) for _ in range(40)]
        node.send(*(request(kind, i) for i, kind in enumerate(kinds)))
        sent.append(kinds)
    net = Counter()  # per version: times applied minus times rolled back, across all nodes
    for node, kinds in zip(nodes, sent, strict=True):
        replies = node.replies(len(kinds))
        assert [reply["in_reply_to"] for reply in replies] == list(range(len(kinds)))
        for kind, reply in zip(kinds, replies, strict=True):
            if kind == "migrate":
                net.update(m["version"] for m in reply["migrations"])
            elif kind == "rollback" and reply["type"] == "migration_rolled_back":
                net.subtract([reply["version"]])
            elif kind == "rollback":
                assert reply["code"] == 22
    assert all(node.finish() == 0 for node in nodes)
    assert set(net.values()) <= {0, 1}
    final = sorted(version for version, count in net.items() if count == 1)
    assert [v for v, _ in workspace.recorded()] == final
    assert {f"t{v}" for v in final} == workspace.tables() - TRACKING_TABLES


def test_one_database_however_spelled_gets_one_worker(workspace):
    link = workspace.root / "link.db"
    link.symlink_to(workspace.db)
    (workspace.root / "sub").mkdir()
    spellings = [str(workspace.db), "test.db", "./sub/../test.db", str(link)]
    pids = set()
    for spelling in spellings:
        completed = subprocess.run(
            [sys.executable, str(PROJECT / "node.py"), "--db", spelling],
            input=b'{"body": {"type": "health", "msg_id": 1}}\n', capture_output=True,
            cwd=workspace.root, env=workspace.env, timeout=PROCESS_TIMEOUT_S,
        )
        pids.add(completed.stdout.split(b'"worker_pid": ')[1].split(b",")[0])
    assert len(pids) == 1


def test_a_flooding_node_does_not_starve_another(workspace):
    flooder, other = workspace.live(), workspace.live()
    other.send(request("health", 0))
    other.replies(1)
    flooding = threading.Event()
    flooding.set()
    sent = 0

    def flood() -> None:
        # Writes block while the flooder's window is full, so the flood lasts exactly until
        # the other node has been answered: without fair turns, that would be never.
        nonlocal sent
        while flooding.is_set():
            flooder.send(*(request("status", sent + i) for i in range(100)))
            sent += 100

    feeder = threading.Thread(target=flood)
    feeder.start()
    try:
        flooder.replies(1)  # the flood is being served
        other.send(request("status", 1))
        assert other.replies(1)[0]["in_reply_to"] == 1
    finally:
        flooding.clear()
        feeder.join(timeout=PROCESS_TIMEOUT_S)
    assert len(flooder.replies(sent - 1, timeout=120)) == sent - 1
    assert flooder.finish() == 0 and other.finish() == 0


def test_a_node_killed_mid_stream_leaves_the_worker_and_other_nodes_untouched(workspace):
    doomed, survivor = workspace.live(), workspace.live()
    survivor.send(request("health", 1))
    worker = survivor.replies(1)[0]["worker_pid"]
    doomed.send(*(request("status", i) for i in range(5_000)))
    doomed.replies(10)
    doomed.process.kill()
    survivor.send(request("migrate", 2), request("health", 3))
    migrated, health = survivor.replies(2)
    assert migrated["count"] == 2
    assert health["worker_pid"] == worker and health["worker_restarts"] == 0
    assert survivor.finish() == 0


def test_a_worker_killed_with_four_nodes_attached_is_replaced_by_exactly_one(workspace):
    nodes = [workspace.live() for _ in range(4)]
    for node in nodes:
        node.send(request("health", 1))
    first = {node.replies(1)[0]["worker_pid"] for node in nodes}
    assert len(first) == 1
    assert first.pop() == workspace.kill_worker()
    for node in nodes:
        node.send(request("status", 2), request("health", 3))
    replies = [node.replies(2) for node in nodes]
    assert all(status["type"] == "migration_status" for status, _ in replies)
    assert len({health["worker_pid"] for _, health in replies}) == 1
    # Every node has had an answer from the new worker. A node that saw the old one go
    # only after sending replaces its socket, so connections settle at one per node.
    msg_ids = iter(range(4, 1_000_000))

    def connected() -> int:
        nodes[0].send(request("health", next(msg_ids)))
        return nodes[0].replies(1)[0]["nodes_connected"]

    wait_until(lambda: connected() == 4, what="one connection per node to the new worker")
    assert all(node.finish() == 0 for node in nodes)


def test_garbage_frames_sent_straight_to_the_worker_get_errors_and_it_carries_on(
    workspace, monkeypatch
):
    workspace.run([request("health", 1)])  # a node starts the worker
    monkeypatch.setenv("MIGRATIONS_RUNTIME_DIR", workspace.env["MIGRATIONS_RUNTIME_DIR"])
    address = endpoint.for_database(workspace.db).address
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 10_000)
    dealer.connect(address)
    try:
        garbage = [
            [b"\xc1\xff not msgpack"],
            [msgpack.packb([1, 2, 3])],
            [msgpack.packb({"type": "status"})],
            [msgpack.packb({"id": "text, not bytes", "type": "status"})],
            [msgpack.packb({"id": b"x" * 100, "type": "status"})],
            [msgpack.packb({1: 2})],
            [b""],
            [msgpack.packb({"id": b"b", "type": "drop table users"})],
            [msgpack.packb({"id": b"c", "type": ["status"]})],
        ]
        for frames in garbage:
            dealer.send_multipart(frames)
            _, packed = dealer.recv_multipart()
            body = msgpack.unpackb(packed, raw=False)
            assert body["type"] == "error" and body["code"] in (10, 12), (frames, body)
        # Several requests in one message: each is answered, in order, the bad one with 12.
        dealer.send_multipart([msgpack.packb({"id": b"ok", "type": "health"}), b"\x93junk",
                               msgpack.packb({"id": b"st", "type": "status"})])
        frames = dealer.recv_multipart()
        assert frames[0::2] == [b"ok", b"", b"st"]
        bodies = [msgpack.unpackb(packed, raw=False) for packed in frames[1::2]]
        assert [body["type"] for body in bodies] == ["health_ok", "error", "migration_status"]
        assert bodies[1]["code"] == 12
    finally:
        dealer.close()
        context.term()


def accepts(address: str) -> bool:
    """True once something listens at a tcp:// address."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def make_keys(workspace, folder: Path, name: str) -> None:
    subprocess.run([sys.executable, "-m", "broker.keys", "create", str(folder), name],
                   cwd=PROJECT, env=workspace.env, check=True, capture_output=True,
                   timeout=PROCESS_TIMEOUT_S)


@pytest.fixture
def standalone(workspace):
    """A worker serving TCP on loopback with keys, a node key it trusts, and one it does not."""
    keys = workspace.root / "keys"
    make_keys(workspace, keys / "worker", "worker")
    make_keys(workspace, keys / "good", "node")
    make_keys(workspace, keys / "bad", "node")
    (keys / "worker" / "authorized" / "good.key").write_bytes(
        (keys / "good" / "node.key").read_bytes())
    for node in ("good", "bad"):
        (keys / node / "worker.key").write_bytes((keys / "worker" / "worker.key").read_bytes())
    address = f"tcp://127.0.0.1:{free_port()}"
    worker = start_standalone(workspace, keys / "worker", address)
    try:
        yield address, keys, worker
    finally:
        stop_standalone(worker)


def start_standalone(workspace, keys: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "--db", str(workspace.db), "--bind", address,
         "--keys", str(keys)],
        cwd=PROJECT, env=workspace.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_standalone(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=PROCESS_TIMEOUT_S)
    worker.stderr.close()


def test_key_files_are_never_readable_by_others(workspace, standalone):
    _, keys, _ = standalone
    for folder, name in ((keys / "worker", "worker"), (keys / "good", "node")):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for created in (folder / f"{name}.key", folder / f"{name}.key_secret"):
            assert stat.S_IMODE(created.stat().st_mode) & 0o077 == 0, created


def test_a_remote_node_with_an_authorized_key_uses_the_standalone_worker(workspace, standalone):
    address, keys, worker = standalone
    replies, completed = workspace.run(
        [request("migrate", 1), request("health", 2)],
        "--connect", address, "--keys", str(keys / "good"),
    )
    assert completed.returncode == 0, completed.stderr
    migrated, health = replies
    assert migrated["count"] == 2
    assert health["worker_pid"] == worker.pid and health["endpoint"] == address
    assert workspace.recorded() == [(1, "create_users"), (2, "add_posts_table")]
    assert worker.poll() is None, "a standalone worker does not exit when idle"


def test_a_remote_node_with_an_unknown_key_is_refused_and_told_why(workspace, standalone):
    address, keys, worker = standalone
    replies, completed = workspace.run(
        [request("status", 1)], "--connect", address, "--keys", str(keys / "bad"), timeout=60
    )
    assert completed.returncode == 3 and replies == []
    assert b"refused this node's key" in completed.stderr
    assert worker.poll() is None


def test_tcp_without_keys_is_refused_on_both_sides(workspace):
    address = f"tcp://127.0.0.1:{free_port()}"
    worker = subprocess.run(
        [sys.executable, "-m", "worker", "--db", str(workspace.db), "--bind", address],
        cwd=PROJECT, env=workspace.env, capture_output=True, timeout=PROCESS_TIMEOUT_S,
    )
    assert worker.returncode == 78 and b"--keys is required" in worker.stderr
    _, node = workspace.run([request("status", 1)], "--connect", address)
    assert node.returncode == 2 and b"--keys is required" in node.stderr


def test_a_standalone_worker_stops_on_sigterm(workspace, standalone):
    _, _, worker = standalone
    wait_until(lambda: workspace.worker_pid() == worker.pid, what="the worker's lock")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PROCESS_TIMEOUT_S) == 0
    assert gone(worker.pid)
    assert os.path.exists(workspace.db.parent / "test.db.lock")


def test_a_request_answered_not_run_never_runs_when_the_worker_appears_later(workspace):
    keys = workspace.root / "keys"
    make_keys(workspace, keys / "worker", "worker")
    make_keys(workspace, keys / "node", "node")
    (keys / "worker" / "authorized" / "node.key").write_bytes(
        (keys / "node" / "node.key").read_bytes())
    (keys / "node" / "worker.key").write_bytes((keys / "worker" / "worker.key").read_bytes())
    workspace.run([request("migrate", 1)])  # versions 1 and 2, through a local worker
    local = workspace.kill_worker(signal.SIGTERM)
    wait_until(lambda: gone(local), what="the local worker to stop")
    address = f"tcp://127.0.0.1:{free_port()}"
    node = workspace.live("--connect", address, "--keys", str(keys / "node"))
    node.send(request("rollback", 2))
    refused = node.replies(1)[0]
    assert refused["code"] == 13 and refused["text"].endswith("unreachable for 10 s; not run")
    worker = start_standalone(workspace, keys / "worker", address)
    try:
        wait_until(lambda: accepts(address), what="the standalone worker to listen")
        node.send(request("rollback", 3))  # gets its own 10 s: not answered 13 at once
        rolled_back = node.replies(1)[0]
        assert rolled_back["type"] == "migration_rolled_back" and rolled_back["version"] == 2
        assert node.finish() == 0
        assert workspace.recorded() == [(1, "create_users")]
    finally:
        stop_standalone(worker)
