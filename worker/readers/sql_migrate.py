"""sql-migrate's SQL migrations (`-- +migrate Up`, `-- +migrate Down`) read into a SqlFile.

    -- +migrate Up notransaction      the up section; `notransaction`: outside a transaction
    CREATE TABLE t (...);             split by the database's rules
    -- +migrate StatementBegin
    CREATE FUNCTION ... $$ ... $$;    one statement, exactly as written
    -- +migrate StatementEnd
    -- +migrate Down                  the down section, with its own option (none: it
                                        cannot be reverted)

As sql-migrate reads them, a command is a line starting `-- +migrate ` and the sections may
come in either order. Stricter than sql-migrate, which skips what it does not understand:
an unknown command or option, SQL before the first section (sql-migrate never runs it), a
second Up or Down, and a StatementEnd without its beginning are errors here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

from worker.readers.blocks import Block, statements
from worker.sql_file import SqlFile, SqlFileError, refuse_sql_before, shown

COMMAND = re.compile(r"^--[ \t]*\+migrate\b[^\n]*$", re.MULTILINE)
PREFIX = "-- +migrate "
NO_TRANSACTION = "notransaction"


class _Section(NamedTuple):
    line: int
    start: int  # offset of its marker line
    body: int  # offset just past it
    transaction: bool


def read(text: str, filename: str, split_statements: Callable[[str], Iterator[str]]) -> SqlFile:
    """The sections of a sql-migrate migration, cut into statements by `split_statements`
    but for StatementBegin ... StatementEnd blocks, each one statement.

    Raises SqlFileError naming the file and line for a file without `-- +migrate Up`, a
    second Up or Down, SQL before the first section, a block left open or ended without a
    beginning, a section marker inside a block, a command or option sql-migrate does not
    know or a line that is not written as one, or a section ending inside a statement.
    """
    sections: dict[str, _Section] = {}
    blocks: dict[str, list[Block]] = {"Up": [], "Down": []}
    current: str | None = None
    opened: tuple[int, int, int] | None = None  # the StatementBegin not yet ended
    line, counted = 1, 0
    for match in COMMAND.finditer(text):
        line += text.count("\n", counted, match.start())
        counted = match.start()
        where = f"{filename} line {line}"
        if not match.group().startswith(PREFIX):
            raise SqlFileError(f"{where}: {shown(match.group())} is not a command as"
                               " sql-migrate reads one: write '-- +migrate Up' (two dashes,"
                               " one space)")
        command, *options = match.group()[len(PREFIX) :].split() or [""]
        body = min(match.end() + 1, len(text))
        if command in ("Up", "Down"):
            if command in sections:
                raise SqlFileError(f"{where}: a second '-- +migrate {command}' (the first is"
                                   f" on line {sections[command].line})")
            if opened is not None:
                raise SqlFileError(f"{where}: '-- +migrate {command}' inside the"
                                   f" StatementBegin block of line {opened[0]}")
            sections[command] = _Section(line, match.start(), body,
                                         _transaction(options, command, where))
            current = command
        elif command in ("StatementBegin", "StatementEnd"):
            if options:
                raise SqlFileError(f"{where}: '-- +migrate {command}' takes no options")
            if current is None:
                raise SqlFileError(f"{where}: '-- +migrate {command}' before '-- +migrate Up'"
                                   " or '-- +migrate Down' belongs to no section")
            if command == "StatementBegin":
                if opened is not None:
                    raise SqlFileError(f"{where}: a second '-- +migrate StatementBegin' before"
                                       f" the StatementEnd of the one on line {opened[0]}")
                opened = (line, match.start(), body)
            else:
                if opened is None:
                    raise SqlFileError(f"{where}: '-- +migrate StatementEnd' without a"
                                       " '-- +migrate StatementBegin' before it")
                blocks[current].append(Block(*opened, match.start(), body))
                opened = None
        else:
            raise SqlFileError(f"{where}: unknown command {shown(match.group())} (known: Up,"
                               " Down, StatementBegin, StatementEnd)")
    if opened is not None:
        raise SqlFileError(f"{filename} line {opened[0]}: '-- +migrate StatementBegin' has no"
                           " '-- +migrate StatementEnd' after it")
    if "Up" not in sections:
        raise SqlFileError(f"{filename} has no '-- +migrate Up' line, so it has nothing to"
                           " apply")
    first = min(sections, key=lambda name: sections[name].start)
    refuse_sql_before(text[: sections[first].start], filename, f"'-- +migrate {first}'")
    spans = _spans(sections, len(text))
    begin = "'-- +migrate StatementBegin'"
    down = sections.get("Down")
    return SqlFile(
        statements(text, spans["Up"], blocks["Up"], split_statements, (filename, "up", begin)),
        None if down is None else statements(
            text, spans["Down"], blocks["Down"], split_statements, (filename, "down", begin)),
        True, sections["Up"].transaction, True if down is None else down.transaction,
        up_span=spans["Up"], down_span=spans.get("Down", (0, 0)),
    )


def _transaction(options: list[str], command: str, where: str) -> bool:
    """Whether a section runs in a transaction: yes unless its marker says notransaction;
    raises SqlFileError for any other option, or one given twice."""
    for option in options:
        if option != NO_TRANSACTION:
            raise SqlFileError(f"{where}: unknown option {shown(option)} after"
                               f" '-- +migrate {command}' (known: {NO_TRANSACTION})")
    if len(options) > 1:
        raise SqlFileError(f"{where}: option {NO_TRANSACTION} is given twice")
    return not options


def _spans(sections: dict[str, _Section], length: int) -> dict[str, tuple[int, int]]:
    """Where each section's text is: from just past its marker to the next marker."""
    ordered = sorted(sections.items(), key=lambda item: item[1].start)
    ends = [section.start for _, section in ordered[1:]] + [length]
    return {name: (section.body, end) for (name, section), end in zip(ordered, ends, strict=True)}
