"""Opening the files a worker owns (lock, log, crash journal) as a careful daemon does, and
the rule they share with CurveZMQ key files: private to this user.

Each is created with its final mode (never chmod-ed later), a symlink planted at its path is
refused rather than followed (O_NOFOLLOW), and an existing file must be a regular file of
this user's that group and others cannot use, as ssh requires of a private key: otherwise
whoever planted or can open it would choose what the worker overwrites, forge the owner it
names, or hold its lock.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700
GROUP_OR_OTHERS = 0o077  # any of these permission bits shares a private path with someone


def open_private(path: Path, flags: int, purpose: str, *, in_private_folder: bool = False) -> int:
    """Open (creating it 0600 if missing) the file at `path`; return its descriptor.

    `flags` are os.open flags besides O_CREAT, O_NOFOLLOW and O_CLOEXEC, which are always
    added. Raises PermissionError, with a sentence naming the file and what it is for, if
    the path is a symlink, not a regular file, owned by another user, or open to group or
    others (with the chmod that fixes it; not checked `in_private_folder`, a folder that
    only this user can enter, such as the runtime directory, which guards it already).
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
    problem, fix = (f"{path} is not a regular file", None)
    if stat.S_ISREG(info.st_mode):
        problem, fix = not_private(path, info)
        if in_private_folder and fix is not None:
            problem = None
    if problem is not None:
        os.close(fd)
        how = f": {fix}" if fix else ""
        raise PermissionError(f"{problem}; refusing to use it for the {purpose}{how}")
    return fd


def not_private(path: Path, status: os.stat_result) -> tuple[str | None, str | None]:
    """Why a file or folder whose status is `status` is not private to this user (a
    sentence naming `path`) and the command that fixes it, if any; (None, None) when it is
    private: this user's, and closed to group and others."""
    if status.st_uid != os.geteuid():
        owner = f"{path} is owned by uid {status.st_uid}, not by this user (uid {os.geteuid()})"
        return owner, None
    mode = stat.S_IMODE(status.st_mode)
    if mode & GROUP_OR_OTHERS:
        wanted = PRIVATE_FOLDER_MODE if stat.S_ISDIR(status.st_mode) else PRIVATE_FILE_MODE
        return (f"{path} is {_shared_as(mode)} by group or others (mode {mode:04o})",
                f"run chmod {wanted:o} {path}")
    return None, None


def _shared_as(mode: int) -> str:
    """How group or others may use a path with `mode`: "readable", "readable and writable"..."""
    kinds = [word for bits, word in ((0o044, "readable"), (0o022, "writable"),
                                     (0o011, "executable")) if mode & bits]
    return " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
