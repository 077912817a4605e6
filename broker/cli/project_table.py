"""Say in the project's pyproject.toml which tracking table adopt chose, every other byte kept.

After an adopt that gave our tracking table another name (the default one is another
tool's), workers find it in the database by themselves; the line `table = "NAME"` under
[tool.migrations-node] also says it to people, and to nodes that read the file. Only a file
whose [tool.migrations-node] table has a header line and no `table` key is written: the
line goes right below the header, the new text must read as the same TOML plus that key,
and it replaces the file in one rename. Anything else leaves the file as it is and says the
line to add.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from pathlib import Path

from broker.cli.settings import TABLE

# The header line of [tool.migrations-node], in any of the spellings TOML allows for it.
HEADER = re.compile(
    rb"^[ \t]*\[[ \t]*tool[ \t]*\.[ \t]*(?:migrations-node|\"migrations-node\""
    rb"|'migrations-node')[ \t]*\][ \t]*(?:#[^\r\n]*)?(\r?\n|\Z)",
    re.MULTILINE,
)


def record_table(project: Path, table: str, why: str) -> str:
    """Write `table = "<table>"  # <why>` into `project`'s [tool.migrations-node]; returns
    what to tell the person: that it was written, or the line to add and why it was not.
    Never raises for the file: a file it cannot change is left as it was."""
    line = f'table = "{table}"'
    try:
        written = _write_beside(project, _with_line(project.read_bytes(), table,
                                                    f"{line}  # {why}"))
    except (OSError, ValueError) as exc:
        return _left(project, line, exc)
    try:
        os.chmod(written, os.stat(project).st_mode & 0o7777)
        os.replace(written, project)
    except OSError as exc:
        _discard(written)
        return _left(project, line, exc)
    return f"recorded {line} under [tool.{TABLE}] in {project}"


def _left(project: Path, line: str, why: Exception) -> str:
    return (f"{project} was left as it is ({why}); add {line} under [tool.{TABLE}] to say it"
            " there (nodes find the table without it)")


def _with_line(text: bytes, table: str, line: str) -> bytes:
    """`text` with `line` (which sets `table`) right below the [tool.migrations-node]
    header; raises ValueError when that cannot be done so that the file reads as before
    plus that key."""
    old = _parsed(text)
    section = old.get("tool", {}).get(TABLE)
    if not isinstance(section, dict):
        raise ValueError(f"it has no [tool.{TABLE}] table")
    if "table" in section:
        raise ValueError(f"its [tool.{TABLE}] already names a table")
    headers = list(HEADER.finditer(text))
    if len(headers) != 1:
        raise ValueError(f"it has no single [tool.{TABLE}] header line to add a key under")
    header = headers[0]
    newline = header[1] or b"\n"
    at = header.end()
    added = (b"" if header[1] else newline) + line.encode() + newline
    result = text[:at] + added + text[at:]
    expected = {**old, "tool": {**old["tool"], TABLE: {**section, "table": table}}}
    try:
        same = _parsed(result) == expected
    except ValueError:
        same = False
    if not same:
        raise ValueError("the line would not read as a key of that table")
    return result


def _parsed(text: bytes) -> dict:
    try:
        return tomllib.loads(text.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"it does not read as TOML: {exc}") from None


def _write_beside(project: Path, text: bytes) -> Path:
    """Write `text` to a new file beside `project`, on disk before it is renamed over it;
    raises OSError, leaving no file, when it cannot."""
    path = project.with_name(f".{project.name}.migrations-node-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        _discard(path)
        raise
    return path


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
