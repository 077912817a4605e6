"""A section's statements when some of them are marked as one by begin and end lines
(goose's and sql-migrate's `StatementBegin` / `StatementEnd`).

    CREATE TABLE t (...);              split by the database's rules    -> a statement each
    -- +goose StatementBegin
    CREATE FUNCTION f() ... ; ... ;    exactly as written, as one       -> one statement
    -- +goose StatementEnd
    INSERT INTO t ...                  split again                      -> a statement each

The marker lines themselves are SQL comments, and run with nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

from worker.sql_file import IncompleteStatement, SqlFileError, code_start, has_code, shown


class Block(NamedTuple):
    """Text marked as one statement: from just past its begin line to its end line."""

    line: int  # the line of its begin marker
    start: int  # offset of the begin marker line
    body: int  # offset just past the begin marker line
    body_end: int  # offset of the end marker line
    end: int  # offset just past the end marker line


def statements(
    text: str,
    span: tuple[int, int],
    blocks: list[Block],
    split_statements: Callable[[str], Iterator[str]],
    where: tuple[str, str, str],
) -> list[str]:
    """The statements of the section `text[span[0]:span[1]]` in order: each of `blocks`
    (in order, inside the span) as one, if it holds any code; the text around them cut
    by `split_statements`. `where` is (filename, section name, begin marker as written).

    Raises SqlFileError naming the file and line for text around the blocks that ends
    inside a statement (before a begin marker, or at the end of the section).
    """
    filename, section, begin_marker = where
    found: list[str] = []
    start, end = span
    for block in [*blocks, None]:
        stop = end if block is None else block.start
        try:
            found.extend(split_statements(text[start:stop]))
        except IncompleteStatement as exc:
            begins = start + exc.offset + code_start(exc.statement)
            line = text.count("\n", 0, begins) + 1
            until = (f"the {section} section ends" if block is None
                     else f"the {begin_marker} on line {block.line} comes")
            raise SqlFileError(
                f"{filename} line {line}: {until} inside this statement (an unclosed quote,"
                f" comment or parenthesis, or a missing ';'?): {shown(text[begins:stop])}"
            ) from None
        if block is not None:
            if has_code(text[block.body : block.body_end]):
                found.append(text[block.body : block.body_end])
            start = block.end
    return found

