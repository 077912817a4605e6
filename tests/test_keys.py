"""CurveZMQ key files are guarded as ssh guards its own, and `create` never silently replaces."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker import keys
from tests.support import PROCESS_TIMEOUT_S, PROJECT, free_port

OTHER_UID = 65534  # "nobody": a user that is not the one running the tests


def run_create(folder: Path, name: str, *flags: str) -> subprocess.CompletedProcess:
    """`python -m broker.keys create FOLDER NAME FLAGS...` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "broker.keys", "create", str(folder), name, *flags],
        cwd=PROJECT, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def refusal(call, *args) -> str:
    """The sentence of the PermissionError that `call(*args)` raises."""
    with pytest.raises(PermissionError) as refused:
        call(*args)
    return str(refused.value)


@pytest.fixture
def worker_keys(tmp_path: Path) -> Path:
    folder = tmp_path / "worker"
    keys.create(folder, "worker")
    return folder


@pytest.fixture
def node_keys(tmp_path: Path, worker_keys: Path) -> Path:
    """A node's key folder, complete: its own pair and the worker's public key."""
    folder = tmp_path / "node"
    keys.create(folder, "node")
    shutil.copy(worker_keys / "worker.key", folder / "worker.key")
    return folder


def test_a_group_readable_worker_secret_key_is_refused_naming_the_file(worker_keys):
    secret = worker_keys / "worker.key_secret"
    secret.chmod(0o640)
    assert refusal(keys.for_worker, worker_keys) == (
        f"{secret} is readable by group or others (mode 0640); run chmod 600 {secret}"
    )


def test_a_worker_with_a_group_readable_secret_key_exits_78_saying_so(workspace, worker_keys):
    secret = worker_keys / "worker.key_secret"
    secret.chmod(0o640)
    worker = subprocess.run(
        [sys.executable, "-m", "worker", "--db", str(workspace.db),
         "--bind", f"tcp://127.0.0.1:{free_port()}", "--keys", str(worker_keys)],
        cwd=PROJECT, env=workspace.env, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=PROCESS_TIMEOUT_S,
    )
    assert worker.returncode == 78, worker.stderr
    assert f"{secret} is readable by group or others (mode 0640)" in worker.stderr


def test_a_world_writable_authorized_folder_is_refused(worker_keys):
    authorized = worker_keys / "authorized"
    authorized.chmod(0o777)
    assert refusal(keys.for_worker, worker_keys) == (
        f"{authorized} is readable, writable and executable by group or others (mode 0777); "
        f"run chmod 700 {authorized}"
    )


def test_a_node_secret_key_readable_by_others_is_refused_by_for_node(node_keys):
    secret = node_keys / "node.key_secret"
    secret.chmod(0o604)
    assert refusal(keys.for_node, node_keys) == (
        f"{secret} is readable by group or others (mode 0604); run chmod 600 {secret}"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_secret_key_owned_by_another_user_is_refused(tmp_path, node_keys):
    copy = shutil.copytree(node_keys, tmp_path / "copy")
    secret = copy / "node.key_secret"
    os.chown(secret, OTHER_UID, -1)
    assert mode_of(secret) == 0o600, "refused for its owner alone, not for its mode"
    assert refusal(keys.for_node, copy) == (
        f"{secret} is owned by uid {OTHER_UID}, not by this user (uid 0)"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder to another user")
def test_an_authorized_folder_owned_by_another_user_is_refused(tmp_path, worker_keys):
    copy = shutil.copytree(worker_keys, tmp_path / "copy")
    os.chown(copy / "authorized", OTHER_UID, -1)
    assert refusal(keys.for_worker, copy) == (
        f"{copy / 'authorized'} is owned by uid {OTHER_UID}, not by this user (uid 0)"
    )


def test_create_twice_refuses_the_second_time_and_keeps_the_first_key(tmp_path):
    folder = tmp_path / "node"
    assert run_create(folder, "node").returncode == 0
    first = {path.name: path.read_bytes() for path in folder.iterdir()}
    again = run_create(folder, "node")
    assert again.returncode == 1
    assert again.stderr == f"{folder / 'node.key'} already exists: use --force to replace it\n"
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == first


def test_create_refuses_to_write_through_a_symlink_at_a_key_path(tmp_path):
    folder = tmp_path / "node"
    folder.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    (folder / "node.key_secret").symlink_to(target)
    again = run_create(folder, "node")
    assert again.returncode == 1
    assert again.stderr == (
        f"{folder / 'node.key_secret'} already exists: use --force to replace it\n"
    )
    assert not target.exists() and not (folder / "node.key").exists()


def test_create_with_force_replaces_the_key_pair(tmp_path):
    folder = tmp_path / "worker"
    assert run_create(folder, "worker").returncode == 0
    old = {name: (folder / name).read_bytes() for name in ("worker.key", "worker.key_secret")}
    forced = run_create(folder, "worker", "--force")
    assert forced.returncode == 0, forced.stderr
    for name, old_bytes in old.items():
        assert (folder / name).read_bytes() != old_bytes, name
    assert keys.for_worker(folder).public in (folder / "worker.key").read_bytes()


def test_keys_replaced_with_force_are_0600_in_a_0700_folder_whatever_the_old_modes(tmp_path):
    folder = tmp_path / "deep" / "worker"
    assert run_create(folder, "worker").returncode == 0
    for name in ("worker.key", "worker.key_secret"):
        (folder / name).chmod(0o644)
    assert run_create(folder, "worker", "--force").returncode == 0
    assert mode_of(folder) == 0o700 and mode_of(folder / "authorized") == 0o700
    assert mode_of(folder / "worker.key") == 0o600
    assert mode_of(folder / "worker.key_secret") == 0o600
