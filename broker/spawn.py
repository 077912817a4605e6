"""Spawning a worker process for a database, detached from the front node's stdio.

The worker gets no stdin, no stdout and its own session, so the node's caller sees EOF on
the node's stdout and stderr as soon as the node exits, while the worker lives on for the
next node until it has been idle for a few seconds. Its stderr goes to a log file in the
runtime directory, whose last lines a node shows when a worker cannot start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from broker.endpoint import Endpoint

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IDLE_EXIT_S = 3.0  # a spawned worker leaves this long after its last node has gone
EXIT_OWNED = 75  # the worker found another owner; not a failure (see worker/__main__.py)
EXIT_CONFIG = 78  # the worker cannot start with this configuration; restarting will not help


def spawn_worker(where: Endpoint, migrations: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "worker",
        "--db",
        str(where.database),
        "--migrations",
        str(migrations),
        "--idle-exit",
        str(IDLE_EXIT_S),
    ]
    with open(where.log_path, "ab") as log_file:
        os.chmod(where.log_path, 0o600)
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,  # so `-m worker` finds this project's worker package
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )


def log_size(where: Endpoint) -> int:
    """Where the log ends now, so that log_since() shows only what a new worker wrote."""
    try:
        return os.path.getsize(where.log_path)
    except OSError:
        return 0


def log_since(where: Endpoint, offset: int, lines: int = 3) -> str:
    """The last lines logged after `offset`, for a node's own error message."""
    try:
        with open(where.log_path, errors="replace") as log_file:
            log_file.seek(offset)
            return "".join(deque(log_file, maxlen=lines)).strip()
    except OSError:
        return ""
