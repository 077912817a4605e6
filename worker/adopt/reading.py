"""What reading another tool's tracking table gives, whichever the tool: a Reading.

Each tool module (see tools.py) turns its table's rows into one of these; plan.py matches it
against the migration files here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from worker.catalog import MAX_VERSION

# Runs one SELECT on the tool's table, which the query names `{table}`; returns its rows.
Rows = Callable[[str], list[tuple]]
LEADING_DIGITS = re.compile(r"[0-9]+")


class Applied(NamedTuple):
    """A version the tool records as applied."""

    version: int
    applied_at: str | None  # ISO 8601 in UTC, as the history writes times; None: not kept
    said: str  # how the tool names it, for texts: "version 3", "3_add_email.sql"


class Problem(NamedTuple):
    """Something that stops an adoption: the tool's state is not clean, or it does not
    match the files here."""

    kind: str  # "dirty", "failed", "missing" or "out_of_order"
    version: int | None  # None when the tool's row names no version this tool can have
    text: str

    def entry(self) -> dict[str, object]:
        return {"kind": self.kind, "version": self.version, "text": self.text}


class Reading(NamedTuple):
    """The tool's applied versions, as its own table says them."""

    applied: list[Applied]  # each version recorded as applied, one by one
    # Every version up to this one counts as applied, each recorded or not (golang-migrate's
    # one row, Flyway's baseline); None when the tool records each version alone.
    covers: Applied | None = None
    problems: tuple[Problem, ...] = ()  # the tool's state is not clean (dirty, failed rows)


def version_of(text: object) -> int | None:
    """The version a tool's version text (or number) spells, 1 to MAX_VERSION, leading
    zeros allowed ("0001" is 1, as dbmate writes it); None for anything else ("1.1")."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text if 1 <= text <= MAX_VERSION else None
    if not isinstance(text, str) or not LEADING_DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0")
    if not digits or len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        return None
    return int(digits)


def leading_version(name: str) -> int | None:
    """The version a file name starts with ("3_add_email.sql" is 3), as sql-migrate reads
    its ids; None when it starts with no digits."""
    match = LEADING_DIGITS.match(name)
    return None if match is None else version_of(match[0])


def truth(value: object) -> bool:
    """A boolean column's value as the tool meant it: PostgreSQL's bool, SQLite's 0 and 1
    (how Go's and Java's drivers store a bool there), or the text some drivers write."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes")
    return bool(value)
