"""What a migration file's name says: its format, whether it applies or reverts, its version
and its name. The catalog's table of name patterns; no file is read here.

    NNNN_title.up.sql, NNNN_title.down.sql   golang-migrate: one migration in two files
    VNNNN__description.sql, UNNNN__....sql   Flyway: versioned, and its undo
    NNNN_name.sql                            dbmate, goose or sql-migrate: its markers say
    NNNN_name.py                             a Python migration

Anything else is not a migration file (Flyway's repeatable `R__name.sql` included: it has no
version, and is read elsewhere).
"""

from __future__ import annotations

import re
from typing import NamedTuple

GOLANG_MIGRATE, FLYWAY, SQL, PYTHON = "golang-migrate", "Flyway", "sql", "py"
UP, DOWN = "up", "down"

# [0-9] and \Z: \d takes any Unicode digit, and $ also matches before a final newline.
# golang-migrate's own pattern (source/parse.go), for .sql files only.
GOLANG_MIGRATE_FILE = re.compile(r"([0-9]+)_(.*)\.(up|down)\.sql\Z")
# Flyway splits at the first `__`; its versions may be dotted (1.1, or 1_1), which the
# catalog refuses by name rather than skip (see catalog.VersionNotWhole).
FLYWAY_FILE = re.compile(r"([VU])([0-9][0-9._]*?)__(.*)\.sql\Z")
MIGRATION_FILE = re.compile(r"([0-9]+)_(.+)\.(py|sql)\Z")


class Name(NamedTuple):
    """A migration file's name, read."""

    format: str  # GOLANG_MIGRATE, FLYWAY, SQL (its markers say which) or PYTHON
    role: str  # UP (it applies; a one-file migration) or DOWN (a down or undo file)
    digits: str  # the version as written: ASCII digits, or for Flyway perhaps dotted
    name: str  # the migration's name


def read_name(filename: str) -> Name | None:
    """What `filename` says, or None if it names no migration file.

    golang-migrate's pattern is tried first: `1_add.up.sql` is its up file, not a file
    named `add.up`. A Flyway description is the name as written, underscores kept (Flyway
    shows them as spaces), as a repeatable's is and every other format's names are.
    """
    match = GOLANG_MIGRATE_FILE.match(filename)
    if match is not None:
        return Name(GOLANG_MIGRATE, match[3], match[1], match[2])
    match = FLYWAY_FILE.match(filename)
    if match is not None:
        return Name(FLYWAY, UP if match[1] == "V" else DOWN, match[2], match[3])
    match = MIGRATION_FILE.match(filename)
    if match is not None:
        return Name(SQL if match[3] == "sql" else PYTHON, UP, match[1], match[2])
    return None


def down_named(filename: str) -> str:
    """The file that would revert the migration `filename` applies (golang-migrate's down
    file, Flyway's undo file), named for an error saying it is missing."""
    named = read_name(filename)
    if named is not None and named.format == FLYWAY:
        return f"undo file U{named.digits}__*.sql"
    return f"down file {filename.removesuffix('.up.sql')}.down.sql"



def up_named(filename: str) -> str:
    """The files that would apply the migration the down or undo file `filename` reverts,
    as a pattern, for an error saying none does."""
    named = read_name(filename)
    if named is not None and named.format == FLYWAY:
        return f"V{named.digits}__*.sql"
    return f"{filename.split('_', 1)[0]}_*.up.sql"
