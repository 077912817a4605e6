"""Errors that say what to do, with real processes: a SQLite path that cannot be opened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import NODE, PROCESS_TIMEOUT_S, request


def cli(workspace, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """`python node.py ARGS` (the project's migrations), run to its end."""
    return subprocess.run(
        [python, str(NODE), *args], capture_output=True, text=True, env=workspace.env,
        cwd=workspace.root, timeout=PROCESS_TIMEOUT_S,
    )


def stdio(workspace, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """The stdio node with one status request on stdin, run to its end."""
    return subprocess.run(
        [python, str(NODE), *args], input=json.dumps(request("status", 1)) + "\n",
        capture_output=True, text=True, env=workspace.env, cwd=workspace.root,
        timeout=PROCESS_TIMEOUT_S,
    )


# -- a SQLite path that cannot be opened ----------------------------------------------------


def sqlite_paths(root: Path) -> dict[str, tuple[Path, str]]:
    """--db paths that cannot be opened, each with the reason the node must give."""
    (root / "a-folder").mkdir()
    (root / "a-file").write_text("plain text\n")
    (root / "not-a-database").write_bytes(b"not a database, whatever its name says\n" * 100)
    return {
        "missing folder": (root / "missing" / "app.db", f"its folder {root / 'missing'} does"
                           " not exist"),
        "a folder": (root / "a-folder", "it is a folder"),
        "under a file": (root / "a-file" / "app.db", f"{root / 'a-file'} is not a folder"),
        "not a database": (root / "not-a-database", "file is not a database"),
    }


@pytest.mark.parametrize("case", ["missing folder", "a folder", "under a file", "not a database"])
def test_a_sqlite_path_that_cannot_be_opened_is_named_with_the_reason(workspace, case):
    path, reason = sqlite_paths(workspace.root)[case]
    sentence = f"the worker cannot start: cannot open {path} as a SQLite database: {reason}"
    done = cli(workspace, "--db", str(path), "status")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {sentence}\n"

    node = stdio(workspace, "--db", str(path))
    assert node.returncode == 2 and node.stdout == ""
    (line,) = node.stderr.splitlines()
    assert line.endswith(f" ERROR node: {sentence}"), line
    assert "worker[" not in line, "the worker's log line is not pasted in"


def without_permission_override() -> None:
    """In the child, before it runs: give up root's power to read and write what file
    permissions refuse (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), for it and its children."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_sqlite_file_without_permission_is_named_with_the_reason(workspace):
    """A file nobody may read or write (mode 000); a node run by root gives up the
    capabilities that ignore file permissions, so that they apply to it as to anyone."""
    path = workspace.root / "secret.db"
    path.write_bytes(b"")
    path.chmod(0)
    done = subprocess.run(
        [sys.executable, str(NODE), "--db", str(path), "status"], capture_output=True,
        text=True, env=workspace.env, cwd=workspace.root, timeout=PROCESS_TIMEOUT_S,
        preexec_fn=without_permission_override if os.geteuid() == 0 else None,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: the worker cannot start: cannot open"
                           f" {path} as a SQLite database: permission denied\n")
