"""Process facts shared by the tests and the benchmark (no pytest here: the benchmark runs
without it)."""

from __future__ import annotations

import os
from pathlib import Path

from broker import database_url, endpoint


def gone(pid: int) -> bool:
    """True once a process no longer runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, we read
        return True


def lock_owner(database: Path | str) -> int | None:
    """The pid the database's owning worker wrote into its lock file, if any (a server's
    URL too: its lock file is named by its target)."""
    if database_url.is_url(str(database)):
        return endpoint.read_owner(endpoint.for_database(database).lock_path).pid
    return endpoint.read_owner(endpoint.lock_file(database)).pid


def alive_owner(database: Path | str) -> int | None:
    """The owning worker's pid while it still runs, else None."""
    pid = lock_owner(database)
    return None if pid is None or gone(pid) else pid


def started_with(name: str, value: str) -> list[int]:
    """Pids of this user's processes whose environment holds `name=value` (the workers a
    test's nodes spawned carry its runtime directory so), found even before they own a lock."""
    wanted = f"{name}={value}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids
