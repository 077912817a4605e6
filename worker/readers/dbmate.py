"""dbmate's SQL migrations (`-- migrate:up`, `-- migrate:down`), this project's own format
from the start: read by worker/sql_file.py, whose parse() is the reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from worker.sql_file import SqlFile, parse


def read(text: str, filename: str, split_statements: Callable[[str], Iterator[str]]) -> SqlFile:
    """The sections of a dbmate migration (see sql_file.parse, and what it raises)."""
    return parse(text, filename, split_statements)
