"""One owner per database: an exclusive lock on a file beside it, held for the worker's life.

flock() locks belong to the open file, so the kernel releases them when the process dies,
however it dies: a killed worker never leaves a stale lock. The lock is on a separate file
(never SQLite's exclusive locking mode), so other programs can still read the database.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from broker.files import open_private


class AlreadyOwned(Exception):
    """Another live process holds the database's owner lock."""


class OwnerLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, note: bytes, wait: bool = False) -> None:
        """Take the lock and write `note` (our pid first, see endpoint.owner_note) into it.

        Raises AlreadyOwned (naming the owner's pid when known) if `wait` is false and
        another process holds it; with `wait`, blocks until the owner goes. Raises
        PermissionError if the path is a symlink or not a regular file of this user's.
        """
        # Not truncated here: until the lock is ours, the pid in it is the owner's.
        fd = open_private(self.path, os.O_RDWR, "owner lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).split(b"\n")[0].decode(errors="replace") or "unknown"
            os.close(fd)
            raise AlreadyOwned(f"{self.path} is held by worker pid {owner}") from None
        except BaseException:  # a stop ending the wait, say
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

