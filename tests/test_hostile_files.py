"""Hostile files and disks: migration files that cannot load, a database file made read-only,
deleted or replaced under a running worker, a disk that fills during a migration, and files
and folders that others own or can open. Each gets a clear error reply or a clear refusal,
nothing is half-applied, and no worker dies over and over. Real processes throughout.

Filling a disk uses a 1 MiB tmpfs (root, and a kernel that lets us mount) and, anywhere, a
file size limit (RLIMIT_FSIZE) set on the running worker; a read-only file uses the
immutable flag (chattr +i: root, on a filesystem that has it), since root writes through
any mode bits. Tests skip, saying why, only when their mechanism is unavailable.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from broker import endpoint
from tests.processes import alive_owner, gone, started_with
from tests.support import (
    PROCESS_TIMEOUT_S,
    PROJECT,
    free_port,
    request,
    table_migrations,
    wait_until,
    write_migration,
)

OTHER_UID = 65534  # "nobody"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")


def migrations(workspace, versions: range) -> Path:
    """The test's migrations folder, holding table migrations of `versions`."""
    folder = workspace.root / "migrations"
    folder.mkdir()
    table_migrations(folder, versions)
    return folder


def integrity(db: Path) -> str:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def health(node, msg_id: int) -> dict:
    node.send(request("health", msg_id))
    return node.replies(1)[0]


# -- migration files that cannot load -----------------------------------------------------

UNLOADABLE = {
    "0002_syntax.py": (b"def up(db)\n    pass\n", "SyntaxError: expected ':'"),
    "0002_latin1.py": (b'NAME = "caf\xe9"\ndef up(db):\n    pass\n',
                       "SyntaxError: (unicode error) 'utf-8' codec can't decode byte 0xe9"),
    "0002_nul.py": (b"def up(db):\n    pass\n\x00\n", "SyntaxError: source code string cannot"
                    " contain null bytes"),
    "0002_coding.py": (b"# coding: no-such-codec\ndef up(db):\n    pass\n",
                       "SyntaxError: unknown encoding: no-such-codec"),
    "0002_imports.py": (b"import no_such_module_here\n\ndef up(db):\n    pass\n",
                        "ModuleNotFoundError: No module named 'no_such_module_here'"),
    "0002_latin1.sql": (b"-- migrate:up\nCREATE TABLE caf\xe9 (id INTEGER);\n",
                        "SqlFileError: 0002_latin1.sql line 2: byte 30 is not valid UTF-8"),
}


@pytest.mark.parametrize("filename", sorted(UNLOADABLE))
def test_a_migration_file_that_cannot_load_is_error_14_naming_why_and_the_worker_goes_on(
    workspace, filename
):
    folder = migrations(workspace, range(1, 2))
    content, cause = UNLOADABLE[filename]
    (folder / filename).write_bytes(content)
    table_migrations(folder, range(3, 4))
    node = workspace.live("--migrations", str(folder))
    before = health(node, 1)
    node.send(request("migrate", 2, dry_run=True), request("migrate", 3))
    dry, real = node.replies(2)
    for reply in (dry, real):
        assert reply["code"] == 14, reply
        assert reply["failed"]["version"] == 2 and reply["failed"]["error"].startswith(cause)
        assert reply["text"].endswith(reply["failed"]["error"]), "the text names the cause too"
    assert dry["dry_run"] is True
    assert dry["applied"] == real["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    after = health(node, 4)
    assert after["worker_pid"] == before["worker_pid"] and after["worker_restarts"] == 0
    (folder / filename).unlink()
    write_migration(folder, "0002_fixed.py", 'db.execute("CREATE TABLE fixed (id INTEGER)")')
    node.send(request("migrate", 5))
    assert [m["version"] for m in node.replies(1)[0]["migrations"]] == [2, 3]
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1"), (2, "fixed"), (3, "t3")]


# -- the database file changes under the worker ------------------------------------------


def remove_database(db: Path, *suffixes: str) -> None:
    for suffix in ("", *suffixes):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


@pytest.mark.parametrize("with_wal", [False, True], ids=["file", "file-wal-and-shm"])
def test_a_database_deleted_while_the_worker_runs_is_created_anew_by_one_new_worker(
    workspace, with_wal
):
    folder = migrations(workspace, range(1, 3))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1, to=1), request("health", 2))
    migrated, first = node.replies(2)
    assert migrated["count"] == 1
    remove_database(workspace.db, *(("-wal", "-shm") if with_wal else ()))
    node.send(request("status", 3), request("migrate", 4), request("health", 5))
    status, applied, second = node.replies(3)
    assert [m["applied"] for m in status["migrations"]] == [False, False], "the file now there"
    assert [m["version"] for m in applied["migrations"]] == [1, 2]
    assert second["worker_restarts"] == 1
    wait_until(lambda: gone(first["worker_pid"]), what="the first worker to exit")
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1"), (2, "t2")]
    assert integrity(workspace.db) == "ok"


def test_a_backup_restored_over_the_database_while_the_worker_runs_is_the_one_served(workspace):
    folder = migrations(workspace, range(1, 4))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1, to=1))
    assert node.replies(1)[0]["count"] == 1
    backup = workspace.root / "backup.db"
    source, copy = sqlite3.connect(workspace.db), sqlite3.connect(backup)
    source.backup(copy)  # what `sqlite3 test.db .backup backup.db` does
    copy.execute("CREATE TABLE restored_marker (id INTEGER)")
    copy.commit()
    source.close()
    copy.close()
    node.send(request("migrate", 2, to=2), request("health", 3))
    assert node.replies(2)[0]["count"] == 1
    os.replace(backup, workspace.db)  # the restore: version 2 is not in the backup
    # The marker, made by hand in the backup, is drift from what the worker recorded.
    node.send(request("status", 4), request("migrate", 5, accept_drift=True),
              request("health", 6))
    status, applied, after = node.replies(3)
    assert [m["applied"] for m in status["migrations"]] == [True, False, False]
    assert [m["version"] for m in applied["migrations"]] == [2, 3]
    assert after["worker_restarts"] == 1
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1"), (2, "t2"), (3, "t3")]
    assert {"restored_marker", "t1", "t2", "t3"} <= workspace.tables()
    assert integrity(workspace.db) == "ok"


def test_a_database_replaced_by_a_file_that_is_not_one_stops_the_node_with_the_reason(workspace):
    folder = migrations(workspace, range(1, 2))
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    assert node.replies(1)[0]["count"] == 1
    impostor = workspace.root / "impostor"
    impostor.write_bytes(b"not a database, whatever its name says\n" * 100)
    os.replace(impostor, workspace.db)
    node.send(request("status", 2))
    assert node.process.wait(timeout=PROCESS_TIMEOUT_S) == 2, "stopped, not restarting"
    said = node.process.stderr.read().decode()
    assert "the worker cannot start" in said and "file is not a database" in said, said
    assert node.received == 1


@contextlib.contextmanager
def immutable(*paths: Path):
    """The files (or folders) at `paths` refuse every write, root's too, while inside."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT_S)
    try:
        if made.returncode != 0:
            pytest.skip(f"chattr +i needs root and a filesystem with the flag: {made.stderr}")
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True,
                       timeout=PROCESS_TIMEOUT_S)


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_database_made_read_only_while_the_worker_runs_fails_writes_as_error_14_and_recovers(
    workspace, journal
):
    folder = migrations(workspace, range(1, 3))
    # A database the worker did not create keeps its journal mode.
    connection = sqlite3.connect(workspace.db)
    connection.execute(f"PRAGMA journal_mode = {journal}")
    connection.execute("CREATE TABLE seed (id INTEGER)")
    connection.close()
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1, to=1), request("health", 2))
    migrated, before = node.replies(2)
    assert migrated["count"] == 1 and before["journal_mode"] == journal
    refusing = [workspace.db, workspace.db.parent]
    if journal == "wal":
        refusing.append(Path(f"{workspace.db}-wal"))
    with immutable(*refusing):
        node.send(request("migrate", 3), request("rollback", 4), request("status", 5))
        failed, not_reverted, status = node.replies(3)
    assert failed["code"] == 14 and failed["failed"]["version"] == 2, failed
    assert failed["failed"]["error"].startswith("OperationalError: "), failed
    assert not_reverted["code"] == 14 and not_reverted["failed"]["version"] == 1, not_reverted
    assert [m["applied"] for m in status["migrations"]] == [True, False]
    node.send(request("migrate", 6), request("health", 7))
    applied, after = node.replies(2)
    assert [m["version"] for m in applied["migrations"]] == [2]
    assert after["worker_pid"] == before["worker_pid"] and after["worker_restarts"] == 0
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1"), (2, "t2")]


# -- a full disk ----------------------------------------------------------------------------

BIG_MIGRATION = (
    'db.execute("CREATE TABLE big (payload TEXT)")\n'
    'db.executemany("INSERT INTO big VALUES (?)", [("x" * 1000,)] * 3000)'
)


def big_migration_folder(workspace) -> Path:
    folder = migrations(workspace, range(1, 2))
    write_migration(folder, "0002_big.py", BIG_MIGRATION, down='db.execute("DROP TABLE big")')
    table_migrations(folder, range(3, 4))
    return folder


def check_disk_full_failure(reply: dict) -> None:
    assert reply["code"] == 14, reply
    assert reply["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert reply["failed"]["version"] == 2, reply
    assert reply["text"].startswith("migration 2 big failed and was rolled back")


@pytest.fixture
def small_disk(workspace):
    """A 1 MiB tmpfs, only this user's; every process using it is killed before it goes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="mn-disk-", dir="/tmp"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
    )
    if mounted.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        users = set(started_with(endpoint.RUNTIME_DIR_ENV, str(mount / "run")))
        users.update(filter(None, [alive_owner(workspace.db)]))
        for process in workspace.started:
            users.add(process.pid)
        for pid in users:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in users:
            wait_until(lambda p=pid: gone(p), timeout=PROCESS_TIMEOUT_S, what=f"pid {pid} to go")
        if subprocess.run(["umount", str(mount)], timeout=PROCESS_TIMEOUT_S).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], timeout=PROCESS_TIMEOUT_S)
        mount.rmdir()


def test_a_disk_full_during_a_migration_is_error_14_and_the_migration_is_not_half_applied(
    workspace, small_disk
):
    folder = big_migration_folder(workspace)
    workspace.db = small_disk / "test.db"
    node = workspace.live("--migrations", str(folder))
    before = health(node, 1)
    node.send(request("migrate", 2), request("status", 3))
    failed, status = node.replies(2)
    check_disk_full_failure(failed)
    assert failed["failed"]["error"] == "OperationalError: database or disk is full"
    assert [m["applied"] for m in status["migrations"]] == [True, False, False]
    (folder / "0002_big.py").unlink()
    write_migration(folder, "0002_small.py", 'db.execute("CREATE TABLE small (id INTEGER)")')
    node.send(request("migrate", 4), request("health", 5))
    applied, after = node.replies(2)
    assert [m["version"] for m in applied["migrations"]] == [2, 3]
    assert after["worker_pid"] == before["worker_pid"] and after["worker_restarts"] == 0
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1"), (2, "small"), (3, "t3")]
    assert "big" not in workspace.tables() and integrity(workspace.db) == "ok"


def fill(directory: Path) -> None:
    """Take every free byte of the filesystem holding `directory`."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_a_full_disk_under_the_worker_log_and_journal_loses_log_lines_not_replies(
    workspace, small_disk
):
    runtime = small_disk / "run"
    runtime.mkdir(mode=0o700)
    workspace.env[endpoint.RUNTIME_DIR_ENV] = str(runtime)
    folder = migrations(workspace, range(1, 2))
    write_migration(folder, "0002_fails.py", 'raise ValueError("x" * 3000)')
    node = workspace.live("--migrations", str(folder))
    before = health(node, 1)
    fill(small_disk)
    # Every failure logs an error of 3 kB, which the full disk refuses.
    node.send(*(request("migrate", msg_id) for msg_id in range(2, 12)), request("health", 12))
    *failed, after = node.replies(11)
    assert [reply["code"] for reply in failed] == [14] * 10, failed
    assert failed[0]["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert all(reply["failed"]["error"].startswith("ValueError: xxx") for reply in failed)
    assert after["worker_pid"] == before["worker_pid"] and after["worker_restarts"] == 0
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1")]


def test_a_file_size_limit_reached_during_a_migration_is_error_14_not_a_killed_worker(workspace):
    folder = big_migration_folder(workspace)
    node = workspace.live("--migrations", str(folder))
    before = health(node, 1)
    worker = before["worker_pid"]
    # As `ulimit -f` would: each file the worker writes stops growing at 256 KiB.
    resource.prlimit(worker, resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
    try:
        node.send(request("migrate", 2), request("health", 3))
        failed, during = node.replies(2)
    finally:
        resource.prlimit(worker, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    check_disk_full_failure(failed)
    assert during["worker_pid"] == worker and during["worker_restarts"] == 0
    (folder / "0002_big.py").write_text("def up(db):\n    pass\n")
    node.send(request("migrate", 4))
    assert [m["version"] for m in node.replies(1)[0]["migrations"]] == [2, 3]
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1"), (2, "big"), (3, "t3")]
    assert "big" not in workspace.tables() and integrity(workspace.db) == "ok"


# -- files and folders others own or can open ----------------------------------------------


def node_refused(workspace, *args: str) -> str:
    """Run a node that must stop with status 2 before answering; its stderr."""
    replies, completed = workspace.run([request("status", 1)], *args)
    assert completed.returncode == 2 and replies == [], completed.stderr
    assert alive_owner(workspace.db) is None, "no worker serves"
    return completed.stderr.decode()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_a_runtime_directory_others_can_enter_is_refused(workspace, mode):
    workspace.runtime.chmod(mode)
    said = node_refused(workspace)
    assert f"{workspace.runtime} is open to other users (mode {mode:o})" in said


@as_root
def test_a_runtime_directory_owned_by_another_user_is_refused(workspace):
    os.chown(workspace.runtime, OTHER_UID, -1)
    said = node_refused(workspace)
    assert f"{workspace.runtime} is not a directory owned by this user" in said


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_lock_file_others_can_open_is_refused_naming_the_chmod(workspace, mode):
    lock = endpoint.lock_file(workspace.db)
    lock.touch(mode=0o600)
    lock.chmod(mode)
    said = node_refused(workspace)
    assert f"{lock} is " in said and f"by group or others (mode {mode:04o})" in said
    assert f"refusing to use it for the owner lock: run chmod 600 {lock}" in said
    lock.chmod(0o600)
    replies, completed = workspace.run([request("status", 1)])
    assert completed.returncode == 0 and replies[0]["type"] == "migration_status"


@as_root
@pytest.mark.parametrize("which", ["lock", "log"])
def test_a_lock_or_log_file_owned_by_another_user_is_refused(workspace, monkeypatch, which):
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, str(workspace.runtime))
    where = endpoint.for_database(workspace.db)
    path = where.lock_path if which == "lock" else where.log_path
    path.touch(mode=0o600)
    os.chown(path, OTHER_UID, -1)
    said = node_refused(workspace)
    assert f"{path} is owned by uid {OTHER_UID}, not by this user (uid 0)" in said


def create_keys(folder: Path, name: str) -> None:
    subprocess.run([sys.executable, "-m", "broker.keys", "create", str(folder), name],
                   cwd=PROJECT, check=True, capture_output=True, timeout=PROCESS_TIMEOUT_S)


@pytest.fixture
def node_keys(workspace) -> Path:
    keys = workspace.root / "keys"
    create_keys(keys / "worker", "worker")
    create_keys(keys / "node", "node")
    shutil.copy(keys / "worker" / "worker.key", keys / "node" / "worker.key")
    return keys / "node"


def test_a_node_whose_secret_key_others_can_read_stops_with_status_2_naming_it(
    workspace, node_keys
):
    secret = node_keys / "node.key_secret"
    secret.chmod(0o644)
    said = node_refused(workspace, "--connect", f"tcp://127.0.0.1:{free_port()}",
                        "--keys", str(node_keys))
    assert f"{secret} is readable by group or others (mode 0644); run chmod 600 {secret}" in said
