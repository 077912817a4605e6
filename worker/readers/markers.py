"""Which tool's section markers a SQL file holds: found line by line, as each tool finds
its own, never guessed from the SQL.

    -- migrate:up, -- migrate:down, ...       dbmate
    -- +goose Up, -- +goose Down, ...         goose
    -- +migrate Up, -- +migrate Down, ...     sql-migrate

A `NNNN_name.sql` file is in the one format whose markers it holds; golang-migrate's and
Flyway's files hold plain SQL, so any marker in one of them contradicts its name.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from worker.sql_file import SqlFileError, shown

DBMATE, GOOSE, SQL_MIGRATE = "dbmate", "goose", "sql-migrate"
# The start of a marker line of each format, in the order they are reported.
MARKERS = {
    DBMATE: re.compile(r"^--[ \t]*migrate:.*$", re.MULTILINE),
    GOOSE: re.compile(r"^[ \t]*--[ \t]*\+goose\b.*$", re.MULTILINE),
    SQL_MIGRATE: re.compile(r"^--[ \t]*\+migrate\b.*$", re.MULTILINE),
}
UP_MARKER = {DBMATE: "-- migrate:up", GOOSE: "-- +goose Up", SQL_MIGRATE: "-- +migrate Up"}


class Marker(NamedTuple):
    """The first marker line of one format in a file."""

    format: str
    line: int
    text: str


def first_markers(text: str) -> list[Marker]:
    """The first marker line of each format `text` holds, in the order of their lines."""
    found = []
    for name, pattern in MARKERS.items():
        match = pattern.search(text)
        if match is not None:
            found.append(Marker(name, text.count("\n", 0, match.start()) + 1, match.group()))
    return sorted(found, key=lambda marker: marker.line)


def format_of(text: str, filename: str) -> str:
    """The format of a `NNNN_name.sql` file: DBMATE, GOOSE or SQL_MIGRATE.

    Raises SqlFileError naming the file for one that holds no marker of any of them, and
    naming the line for one that holds markers of two.
    """
    found = first_markers(text)
    if not found:
        known = ", ".join(f"'{marker}' ({name})" for name, marker in UP_MARKER.items())
        raise SqlFileError(
            f"{filename} has no section marker, so it has nothing to apply: a file named"
            f" NNNN_name.sql starts its up section with {known}; golang-migrate's files"
            " are named NNNN_name.up.sql"
        )
    first, *others = found
    if others:
        raise SqlFileError(
            f"{filename} line {others[0].line}: {shown(others[0].text)} is a"
            f" {others[0].format} marker, but line {first.line} holds a {first.format} one"
            f" ({shown(first.text)}): a file is in one format"
        )
    return first.format


def refuse_markers(text: str, filename: str, format_name: str) -> None:
    """Raises SqlFileError naming the file and line if `text`, a file that `format_name`
    (golang-migrate, Flyway) reads as plain SQL, holds another format's marker."""
    found = first_markers(text)
    if found:
        raise SqlFileError(
            f"{filename} line {found[0].line}: {shown(found[0].text)} is a {found[0].format}"
            f" marker, but the file is named as {format_name}'s, which holds plain SQL"
            " without markers: rename the file or take the marker out"
        )
