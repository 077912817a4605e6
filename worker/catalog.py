"""Finding migration files in a folder and loading their code.

A migration is a file `NNNN_name.py` (version = the integer prefix, name = the rest) that
defines up(db) and, to be reversible, down(db); NNNN is ASCII digits. Other files are
ignored. Listing the folder does not import anything, and is cached until the folder
changes, so `status` stays cheap.
"""

from __future__ import annotations

import os
import re
import time
import types
from pathlib import Path
from typing import NamedTuple

from broker.errors import PRECONDITION_FAILED, ReplyError

# [0-9] and \Z: \d takes any Unicode digit, and $ also matches before a final newline.
MIGRATION_FILE = re.compile(r"([0-9]+)_(.+)\.py\Z")
MAX_VERSION = 2**63 - 1  # the largest SQLite INTEGER, and msgpack's int64
RACY_WINDOW_NS = 2_000_000_000  # listings of a folder changed this recently are not cached


class Migration(NamedTuple):
    """A migration file; a tuple, because a catalog may hold ten thousand of them."""

    version: int
    name: str
    path: str  # a plain string: Path objects weigh several times more

    def entry(self, **fields: object) -> dict[str, object]:
        """The reply entry for this migration: version and name, then `fields`."""
        return {"version": self.version, "name": self.name, **fields}

    def load(self) -> tuple[types.ModuleType, str]:
        """Execute the file as a fresh module; return it with the sha256 of the bytes run.

        Compiling the bytes we hashed (rather than importing by path) means the checksum
        recorded is of exactly the code that ran, and no __pycache__ is written beside it.
        Raises whatever the file raises (SyntaxError, ImportError, ...).
        """
        import hashlib  # only applying needs it: status and start-up do not load OpenSSL

        with open(self.path, "rb") as file:
            source = file.read()
        module = types.ModuleType(f"migration_{self.version}_{self.name}")
        module.__file__ = self.path
        exec(compile(source, self.path, "exec"), module.__dict__)
        return module, hashlib.sha256(source).hexdigest()


class DuplicateVersion(ReplyError):
    def __init__(self, version: int, first: Path, second: Path) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration version {version} is defined twice: {first.name} and {second.name}",
        )


class VersionTooLarge(ReplyError):
    def __init__(self, filename: str, digits: str) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration file {filename} has version {digits},"
            f" above the largest allowed {MAX_VERSION}",
        )


class NameNotUtf8(ReplyError):
    def __init__(self, filename: str) -> None:
        shown = os.fsencode(filename).decode("utf-8", errors="backslashreplace")
        super().__init__(
            PRECONDITION_FAILED, f"migration file name {shown} is not valid UTF-8; rename it"
        )


class Catalog:
    """The migrations of one folder, in version order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamp: int | None = None
        self._migrations: list[Migration] = []
        self.generation = 0  # grows each time the folder is listed anew

    def migrations(self) -> list[Migration]:
        """Every migration file, sorted by version.

        Raises DuplicateVersion, VersionTooLarge or NameNotUtf8 (all PRECONDITION_FAILED
        replies) for a folder holding a migration file that cannot be served.

        Raises FileNotFoundError if the folder is missing.
        """
        stamp = os.stat(self.folder).st_mtime_ns
        if stamp != self._stamp:
            self._migrations = scan(self.folder)
            self.generation += 1
            # File times are coarse (a clock tick): a change within the same tick as the
            # listing would keep this stamp, so a stamp that recent is not trusted yet.
            racy = time.time_ns() - stamp < RACY_WINDOW_NS
            self._stamp = None if racy else stamp
        return self._migrations


def scan(folder: Path) -> list[Migration]:
    """The migration files of `folder`, sorted by version.

    Raises DuplicateVersion, VersionTooLarge or NameNotUtf8, naming the file(s).
    """
    found: dict[int, Migration] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = MIGRATION_FILE.match(entry.name)
            if match is None or not entry.is_file():
                continue
            migration = Migration(_parse_version(entry.name, match[1]), match[2], entry.path)
            other = found.get(migration.version)
            if other is not None:
                first, second = sorted((Path(other.path), Path(migration.path)))
                raise DuplicateVersion(migration.version, first, second)
            found[migration.version] = migration
    return [found[version] for version in sorted(found)]


def _parse_version(filename: str, digits: str) -> int:
    """The version that `digits` spell; raises NameNotUtf8 or VersionTooLarge for `filename`.

    The name is checked here because os.scandir hands a name that is not UTF-8 over with
    surrogate escapes, which no reply (msgpack, JSON for stdout) can carry.
    """
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise NameNotUtf8(filename) from None
    digits = digits.lstrip("0") or "0"
    # Counting digits first: int() refuses strings of more than 4300 digits.
    if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        raise VersionTooLarge(filename, digits)
    return int(digits)
