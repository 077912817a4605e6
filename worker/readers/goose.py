"""goose's SQL migrations (`-- +goose Up`, `-- +goose Down`) read into a SqlFile.

    -- +goose NO TRANSACTION         anywhere: both sections outside a transaction
    -- +goose Up                     the up section begins (required, once)
    CREATE TABLE t (...);            split by the database's rules
    -- +goose StatementBegin
    CREATE FUNCTION ... $$ ... $$;   one statement, exactly as written
    -- +goose StatementEnd
    -- +goose Down                   the down section (none: it cannot be reverted)

As goose reads them: an annotation is a `--` line holding `+goose`, at the very start of
its line, matched without regard to case; anything else such a line holds is an error, as
is an annotation goose does not know. `-- +goose ENVSUB ON` (environment variables
substituted into the SQL) is refused: what a migration runs must be what its checksum is of.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from worker.readers.blocks import Block, statements
from worker.sql_file import SqlFile, SqlFileError, refuse_sql_before, shown

ANNOTATION = re.compile(r"^[ \t]*--[^\n]*\+goose[^\n]*$", re.MULTILINE)
KNOWN = ("Up", "Down", "StatementBegin", "StatementEnd", "NO TRANSACTION", "ENVSUB ON",
         "ENVSUB OFF")


def read(text: str, filename: str, split_statements: Callable[[str], Iterator[str]]) -> SqlFile:
    """The sections of a goose SQL migration, cut into statements by `split_statements`
    but for StatementBegin ... StatementEnd blocks, each one statement.

    Raises SqlFileError naming the file and line for a file without `-- +goose Up`, a
    second Up or Down, Down before Up, SQL before Up, a block left open or ended without
    a beginning, a section marker inside a block, an unknown or indented annotation,
    `ENVSUB ON`, or a section ending inside a statement.
    """
    marks: dict[str, tuple[int, int, int]] = {}  # "Up"/"Down" -> (line, start, body)
    blocks: dict[str, list[Block]] = {"Up": [], "Down": []}
    opened: tuple[int, int, int] | None = None  # the StatementBegin not yet ended
    transaction = True
    line, counted = 1, 0
    for match in ANNOTATION.finditer(text):
        line += text.count("\n", counted, match.start())
        counted = match.start()
        where = f"{filename} line {line}"
        annotation = _annotation(match.group(), where)
        body = min(match.end() + 1, len(text))
        section = "Down" if "Down" in marks else "Up" if "Up" in marks else None
        if annotation in ("Up", "Down"):
            if annotation in marks:
                raise SqlFileError(f"{where}: a second '-- +goose {annotation}' (the first is"
                                   f" on line {marks[annotation][0]})")
            if annotation == "Down" and section is None:
                raise SqlFileError(f"{where}: '-- +goose Down' comes before '-- +goose Up'")
            if opened is not None:
                raise SqlFileError(f"{where}: '-- +goose {annotation}' inside the"
                                   f" StatementBegin block of line {opened[0]}")
            marks[annotation] = (line, match.start(), body)
        elif annotation == "StatementBegin":
            if section is None:
                raise SqlFileError(f"{where}: '-- +goose StatementBegin' before"
                                   " '-- +goose Up' belongs to no section")
            if opened is not None:
                raise SqlFileError(f"{where}: a second '-- +goose StatementBegin' before the"
                                   f" StatementEnd of the one on line {opened[0]}")
            opened = (line, match.start(), body)
        elif annotation == "StatementEnd":
            if opened is None or section is None:
                raise SqlFileError(f"{where}: '-- +goose StatementEnd' without a"
                                   " '-- +goose StatementBegin' before it")
            blocks[section].append(Block(opened[0], opened[1], opened[2], match.start(), body))
            opened = None
        elif annotation == "NO TRANSACTION":
            transaction = False
        elif annotation == "ENVSUB ON":
            raise SqlFileError(
                f"{where}: '-- +goose ENVSUB ON' is not supported: environment variables are"
                " not substituted here, so that what runs is what was checksummed; write the"
                " values into the file"
            )
        # ENVSUB OFF: substitution is off, as it always is here.
    if opened is not None:
        raise SqlFileError(f"{filename} line {opened[0]}: '-- +goose StatementBegin' has no"
                           " '-- +goose StatementEnd' after it")
    if "Up" not in marks:
        raise SqlFileError(f"{filename} has no '-- +goose Up' line, so it has nothing to apply")
    up, down = marks["Up"], marks.get("Down")
    refuse_sql_before(text[: up[1]], filename, "'-- +goose Up'")
    up_span = (up[2], len(text) if down is None else down[1])
    down_span = (0, 0) if down is None else (down[2], len(text))
    begin = "'-- +goose StatementBegin'"
    return SqlFile(
        statements(text, up_span, blocks["Up"], split_statements, (filename, "up", begin)),
        None if down is None else statements(
            text, down_span, blocks["Down"], split_statements, (filename, "down", begin)),
        True, transaction, transaction, up_span=up_span, down_span=down_span,
    )


def _annotation(line: str, where: str) -> str:
    """The annotation a `--` line holding `+goose` makes, as KNOWN spells it.

    Raises SqlFileError for an indented line, a line holding two, none, or one goose does
    not know (goose refuses each of them too).
    """
    if line[:1] in (" ", "\t"):
        raise SqlFileError(f"{where}: a goose annotation starts its line; this one is indented:"
                           f" {shown(line.strip())}")
    words = line.replace("--", "").replace("+goose", "", 1)
    if "+goose" in words:
        raise SqlFileError(f"{where}: two goose annotations on one line: {shown(line)}")
    words = words.strip()
    for known in KNOWN:
        if words.casefold() == known.casefold():
            return known
    raise SqlFileError(f"{where}: unknown goose annotation {shown(line)} (known:"
                       f" {', '.join(KNOWN)}, each alone on its line)")
