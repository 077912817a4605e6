"""Read a SQL migration with the reader its file name and its markers pick (see the
package's docstring for the table)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

from worker import sql_file
from worker.readers import dbmate, flyway, golang_migrate, goose, markers, names, sql_migrate

ONE_FILE_READERS = {markers.DBMATE: dbmate, markers.GOOSE: goose,
                    markers.SQL_MIGRATE: sql_migrate}
TWO_FILE_READERS = {names.GOLANG_MIGRATE: golang_migrate, names.FLYWAY: flyway}
DOWN_SECTIONS = {markers.DBMATE: "-- migrate:down section", markers.GOOSE: "-- +goose Down section",
                 markers.SQL_MIGRATE: "-- +migrate Down section"}


class Read(NamedTuple):
    """A SQL migration as its reader made it out."""

    parsed: sql_file.SqlFile
    text: str  # the (up) file's text: where parsed.up_span is
    format: str  # dbmate, goose, sql-migrate, golang-migrate or Flyway
    down_named: str  # what would revert it, for an error saying it has none


def read(
    path: str,
    source: bytes,
    down: tuple[str, bytes] | None,
    split_statements: Callable[[str], Iterator[str]],
) -> Read:
    """Read the SQL migration file at `path`, whose bytes are `source`, with its down file
    (its path and bytes) for a format that keeps it apart, by the reader its name picks.

    Raises sql_file.SqlFileError naming the file (and line) for one that is not UTF-8,
    not named as a SQL migration, or that its reader refuses.
    """
    filename = os.path.basename(path)
    named = names.read_name(filename)
    if named is None or named.format == names.PYTHON:
        raise sql_file.SqlFileError(f"{filename} is not named as a SQL migration file")
    text = sql_file.decode(source, filename)
    if named.format == names.SQL:
        found = markers.format_of(text, filename)
        parsed = ONE_FILE_READERS[found].read(text, filename, split_statements)
        return Read(parsed, text, found, DOWN_SECTIONS[found])
    down_file = None
    if down is not None:
        down_filename = os.path.basename(down[0])
        down_file = (down_filename, sql_file.decode(down[1], down_filename))
    parsed = TWO_FILE_READERS[named.format].read((filename, text), down_file, split_statements)
    return Read(parsed, text, named.format, names.down_named(filename))
