"""Opening the files a worker owns (lock, log, crash journal) as a careful daemon does.

Each is created with its final mode (never chmod-ed later), a symlink planted at its path is
refused rather than followed (O_NOFOLLOW), and an existing file must be a regular file of
this user's: otherwise whoever planted it would choose what the worker overwrites.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def open_private(path: Path, flags: int, purpose: str) -> int:
    """Open (creating it 0600 if missing) the file at `path`; return its descriptor.

    `flags` are os.open flags besides O_CREAT, O_NOFOLLOW and O_CLOEXEC, which are always
    added. Raises PermissionError, with a sentence naming the file and what it is for, if
    the path is a symlink, not a regular file, or owned by another user.
    """
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(
                f"{path} is a symbolic link; refusing to follow it for the {purpose}"
                " (remove it)"
            ) from None
        raise
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.getuid():
        problem = f"belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})"
    if problem is not None:
        os.close(fd)
        raise PermissionError(f"{path} {problem}; refusing to use it for the {purpose}")
    return fd
