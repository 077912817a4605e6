"""Writing a schema dump to its file: the whole of it, or nothing.

The text goes to a new file beside the target, is flushed to disk, and is renamed over the
target, so that a reader (an editor, `git diff`, a crash midway) sees the old dump or the
new one, never part of one. A file there already keeps its permissions.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

NEW_FILE_MODE = 0o644  # a dump is committed, and read by anyone who reads the code


def write_dump(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` (UTF-8) in one rename. Raises OSError, leaving
    the file as it was and no temporary file behind, when it cannot."""
    temporary = path.with_name(f".{path.name}.migrations-node-{os.getpid()}")
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(text.encode())
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
