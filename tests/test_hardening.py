"""The spine under abuse: migration code that exits, signals at awkward instants, planted
symlinks, open directories, oversized messages, a closed stdout. Real processes throughout."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
import zmq

from broker import codec, endpoint
from tests.processes import gone
from tests.support import (
    PROCESS_TIMEOUT_S,
    PROJECT,
    free_port,
    request,
    table_migrations,
    wait_until,
    write_migration,
)


def worker_command(workspace, *args: str) -> list[str]:
    return [sys.executable, "-m", "worker", "--db", str(workspace.db), *args]


def start_worker(workspace, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        worker_command(workspace, *args), cwd=PROJECT, env=workspace.env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def reap(process: subprocess.Popen) -> tuple[int, bytes]:
    """Wait for a process started here; its status and what it wrote on stderr."""
    _, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    return process.returncode, err


# -- 1. migration code cannot take the worker down by exiting ------------------------------


def test_a_migration_calling_sys_exit_fails_as_error_14_and_the_same_worker_goes_on(
    workspace, folder
):
    table_migrations(folder, range(1, 2))
    write_migration(folder, "0002_quits.py",
                    'db.execute("CREATE TABLE quits (id INTEGER)")\nimport sys\nsys.exit(78)')
    table_migrations(folder, range(3, 4))
    node = workspace.live("--migrations", str(folder))
    node.send(request("health", 1), request("migrate", 2), request("health", 3))
    before, failed, after = node.replies(3)
    assert failed["code"] == 14
    assert failed["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert failed["failed"] == {"version": 2, "name": "quits", "error": "SystemExit: 78"}
    assert after["worker_pid"] == before["worker_pid"] and after["worker_restarts"] == 0
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1")]
    assert "quits" not in workspace.tables()


# -- 2. a stop at any instant is a clean stop ---------------------------------------------


def blocked_on_flock(pid: int) -> bool:
    """True while `pid` waits for a flock that another process holds (/proc/locks `->`)."""
    with open("/proc/locks") as locks:
        # "1: -> FLOCK  ADVISORY  WRITE <pid> ..." is a process blocked on lock 1
        return any(fields[1:2] == ["->"] and fields[5:6] == [str(pid)]
                   for fields in map(str.split, locks))


def test_sigterm_while_a_worker_waits_for_the_owner_lock_is_a_clean_exit(workspace):
    lock_path = endpoint.lock_file(workspace.db)
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        waiting = start_worker(workspace, "--wait")
        wait_until(lambda: blocked_on_flock(waiting.pid), what="the worker to wait for the lock")
        waiting.send_signal(signal.SIGTERM)
        status, err = reap(waiting)
    finally:
        os.close(holder)
    assert status == 0, err
    assert b"stopped while waiting for the owner lock" in err


def test_sigterm_the_instant_a_tcp_worker_owns_its_database_is_a_clean_exit(workspace):
    keys = workspace.root / "keys"
    subprocess.run([sys.executable, "-m", "broker.keys", "create", str(keys), "worker"],
                   cwd=PROJECT, check=True, capture_output=True, timeout=PROCESS_TIMEOUT_S)
    for _ in range(5):
        worker = start_worker(workspace, "--bind", f"tcp://127.0.0.1:{free_port()}",
                              "--keys", str(keys))
        # The lock file names the worker before its socket and authenticator exist.
        wait_until(lambda w=worker: workspace.worker_pid() == w.pid, what="the worker's lock")
        worker.send_signal(signal.SIGTERM)
        status, err = reap(worker)
        assert status == 0, err
        assert gone(worker.pid)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_node_stops_with_128_plus_the_signal_and_no_traceback(workspace, signum):
    node = workspace.live()
    node.send(request("health", 1))
    worker = node.replies(1)[0]["worker_pid"]
    node.process.send_signal(signum)
    assert node.process.wait(timeout=PROCESS_TIMEOUT_S) == 128 + signum
    err = node.process.stderr.read()
    assert b"Traceback" not in err and f"stopped by signal {signum}".encode() in err
    assert not gone(worker), "the worker is not the node's to stop"


# -- 3. files opened as a careful daemon opens them ---------------------------------------


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_never_written(workspace):
    target = workspace.root / "precious.txt"
    target.write_text("keep me\n")
    endpoint.lock_file(workspace.db).symlink_to(target)
    replies, completed = workspace.run([request("status", 1)])
    assert completed.returncode == 2 and replies == []
    assert b"is a symbolic link; refusing to follow it" in completed.stderr
    assert target.read_text() == "keep me\n"


def test_a_symlink_at_the_worker_log_path_is_refused_and_its_target_never_written(
    workspace, monkeypatch
):
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, str(workspace.runtime))
    target = workspace.root / "precious.txt"
    target.write_text("keep me\n")
    target.chmod(0o644)
    endpoint.for_database(workspace.db).log_path.symlink_to(target)
    replies, completed = workspace.run([request("status", 1)])
    assert completed.returncode == 2 and replies == []
    assert target.read_text() == "keep me\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_the_worker_socket_and_log_are_private_from_their_creation(workspace, monkeypatch):
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, str(workspace.runtime))
    where = endpoint.for_database(workspace.db)
    old_umask = os.umask(0o000)  # the node and its worker inherit the most open umask
    try:
        workspace.run([request("health", 1)])
    finally:
        os.umask(old_umask)
    for created in (Path(where.address.removeprefix("ipc://")), where.log_path,
                    where.journal_path, where.lock_path):
        assert stat.S_IMODE(created.stat().st_mode) & 0o077 == 0, created


def test_an_ipc_address_given_by_hand_in_an_open_directory_is_refused(workspace):
    open_dir = workspace.root / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    address = f"ipc://{open_dir}/worker.sock"
    worker = subprocess.run(worker_command(workspace, "--bind", address), cwd=PROJECT,
                            env=workspace.env, capture_output=True, timeout=PROCESS_TIMEOUT_S)
    assert worker.returncode == 78 and b"is open to other users" in worker.stderr
    assert not (open_dir / "worker.sock").exists()
    _, node = workspace.run([request("status", 1)], "--connect", address)
    assert node.returncode == 2 and b"is open to other users" in node.stderr


def test_an_abstract_ipc_address_is_refused(workspace):
    _, node = workspace.run([request("status", 1)], "--connect", "ipc://@migrations")
    assert node.returncode == 2 and b"abstract unix socket" in node.stderr


def test_a_node_with_another_migrations_folder_than_the_running_worker_is_refused(
    workspace, folder
):
    table_migrations(folder, range(1, 2))
    other = workspace.root / "other"
    other.mkdir()
    table_migrations(other, range(1, 3))
    first = workspace.live("--migrations", str(folder))
    first.send(request("health", 1))
    worker = first.replies(1)[0]["worker_pid"]
    replies, completed = workspace.run([request("migrate", 1)], "--migrations", str(other))
    assert completed.returncode == 2 and replies == []
    assert f"(pid {worker}) serves the migrations in {folder}".encode() in completed.stderr
    assert "t2" not in workspace.tables()
    assert first.finish() == 0


# -- 5. bounded input everywhere ----------------------------------------------------------


@pytest.fixture
def dealer(workspace, monkeypatch):
    """A raw DEALER connected to the database's worker, which a node has started."""
    workspace.run([request("health", 1)])
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, str(workspace.runtime))
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, PROCESS_TIMEOUT_S * 1000)
    socket.connect(endpoint.for_database(workspace.db).address)
    try:
        yield socket
    finally:
        socket.close()
        context.term()


def test_a_message_with_more_requests_than_allowed_is_served_up_to_the_bound(dealer):
    limit = codec.MAX_MESSAGE_REQUESTS
    dealer.send_multipart([codec.pack_request(b"r%d" % i, "status") for i in range(limit + 8)])
    frames = dealer.recv_multipart()
    ids, bodies = frames[0::2], [msgpack.unpackb(body) for body in frames[1::2]]
    assert ids == [b"r%d" % i for i in range(limit)] + [b""]
    assert all(body["type"] == "migration_status" for body in bodies[:-1])
    assert bodies[-1]["code"] == 12
    assert "the last 8 were not run" in bodies[-1]["text"]
    dealer.send_multipart([codec.pack_request(b"after", "health")])
    assert dealer.recv_multipart()[0] == b"after"


@pytest.fixture
def fake_worker(workspace):
    """An address in a private directory, and a function binding a ROUTER there that plays
    the worker by hand; every socket is closed at teardown."""
    private = Path(workspace.runtime) / "fake"
    private.mkdir(mode=0o700)
    address = f"ipc://{private}/fake.sock"
    context = zmq.Context()
    sockets = []

    def bind() -> zmq.Socket:
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.RCVTIMEO, PROCESS_TIMEOUT_S * 1000)
        router.bind(address)
        sockets.append(router)
        return router

    try:
        yield address, bind
    finally:
        for router in sockets:
            router.close(linger=0)
        context.term()


def status_body(marker: str) -> bytes:
    return codec.pack({"type": "migration_status", "migrations": [], "from": marker})


def node_with_a_status_at_the_fake(workspace, fake: zmq.Socket, address: str):
    """A node on the fake worker, which has just received its status request.

    Returns the node, the node's routing id at the fake, and the request id."""
    node = workspace.live("--connect", address)
    node.send(request("status", 1))
    peer, frame = fake.recv_multipart()
    return node, peer, codec.unpack(frame)["id"]


def test_a_reply_larger_than_a_node_accepts_drops_the_connection_and_the_resend_is_answered(
    workspace, fake_worker
):
    address, bind = fake_worker
    fake = bind()
    node, peer, request_id = node_with_a_status_at_the_fake(workspace, fake, address)
    fake.send_multipart([peer, request_id, b"\x00" * (codec.MAX_REPLY_BYTES + 1)])
    peer, frame = fake.recv_multipart()  # the node dropped the connection and resent
    assert codec.unpack(frame)["id"] == request_id
    fake.send_multipart([peer, request_id, status_body("resend")])
    assert node.replies(1)[0]["from"] == "resend"
    assert node.finish() == 0


def test_a_reply_that_arrived_before_its_worker_went_is_kept_not_resent(
    workspace, fake_worker
):
    address, bind = fake_worker
    fake = bind()
    node, peer, request_id = node_with_a_status_at_the_fake(workspace, fake, address)
    node.process.send_signal(signal.SIGSTOP)  # the node sees the reply and the hang-up at once
    try:
        fake.send_multipart([peer, request_id, status_body("first")])
        fake.close(linger=PROCESS_TIMEOUT_S * 1000)  # returns once the reply is on its way
        successor = bind()
    finally:
        node.process.send_signal(signal.SIGCONT)
    stop = threading.Event()
    answering = threading.Thread(target=answer_all, args=(successor, "resend", stop))
    answering.start()
    try:
        assert node.replies(1)[0]["from"] == "first"
        assert node.finish() == 0
    finally:
        stop.set()
        answering.join(timeout=PROCESS_TIMEOUT_S)


def answer_all(router: zmq.Socket, marker: str, stop: threading.Event) -> None:
    """Answer every request reaching `router` with a status marked `marker`, until `stop`."""
    while not stop.is_set():
        if router.poll(50):
            peer, *frames = router.recv_multipart()
            for frame in frames:
                router.send_multipart([peer, codec.unpack(frame)["id"], status_body(marker)])


# -- 7. the crash-after-commit hook is not armed by accident ------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MIGRATIONS_CRASH_AFTER_COMMIT", "absolute"),  # the name it had before
     ("MIGRATIONS_TEST_CRASH_AFTER_COMMIT", "relative")],  # to the worker's directory
)
def test_the_crash_hook_stays_off_unless_armed_exactly(workspace, variable, value):
    trigger = workspace.root / "crash-now"
    trigger.touch()
    spawned_in = PROJECT  # where a node starts its worker
    path = str(trigger) if value == "absolute" else os.path.relpath(trigger, spawned_in)
    workspace.env[variable] = path
    replies, _ = workspace.run([request("migrate", 1), request("health", 2)])
    assert replies[0]["count"] == 2 and replies[1]["worker_restarts"] == 0
    assert trigger.exists()


# -- 12. a closed stdout is a failure -----------------------------------------------------


def test_a_node_whose_stdout_is_closed_early_exits_as_if_killed_by_sigpipe(workspace):
    node = workspace.start()
    feeder = threading.Thread(
        target=lambda: _write_quietly(node.stdin, b"".join(
            b'{"body": {"type": "status", "msg_id": %d}}\n' % i for i in range(2000))))
    feeder.start()
    head = node.stdout.read(100)  # as `| head -c 100` does
    node.stdout.close()
    feeder.join(timeout=PROCESS_TIMEOUT_S)
    assert len(head) == 100
    assert node.wait(timeout=PROCESS_TIMEOUT_S) == 128 + signal.SIGPIPE
    assert b"stdout was closed before every reply was written" in node.stderr.read()


def _write_quietly(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except BrokenPipeError:
        pass  # the node may stop before it has read all of it
