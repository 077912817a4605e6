"""Reading SQL migration files (dbmate's format) into their sections' statements.

    -- migrate:foreign_keys off           optional, on any line       -> SqlFile.foreign_keys
    -- migrate:up transaction:false       options optional            -> SqlFile.up_transaction
                  lock_timeout:SECONDS                                  SqlFile.up_lock_timeout
    CREATE TABLE users (...);             one string per statement,   -> SqlFile.up
    CREATE TRIGGER ... BEGIN ...; END;      exactly as written
    -- migrate:down                       its own options             -> SqlFile.down_transaction
    DROP TABLE users;                     no such section: None;      -> SqlFile.down
                                            an empty one: []
    -- migrate:stub (any text)            its section is unwritten    -> SqlFile.up_stub,
                                            (`migrations-node new`)        SqlFile.down_stub

Directive lines are found line by line before any SQL is read, as dbmate finds them: a line
inside a multi-line string or block comment that looks like a directive is read as one.
Statements are never rewritten, because SQLite keeps a CREATE statement's text (its comments
included) in its schema.

`-- migrate:stub` is this project's own directive (dbmate has none of that name, and every
unknown directive is refused here anyway): `migrations-node new --sql` writes one into each
section, and a section that still holds one refuses to run, so that an unedited stub cannot
be applied, nor reverted, by mistake. The rest of its line is free text.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from typing import NamedTuple

# `--` at the very start of a line, then `migrate:` and a name; the rest are options.
DIRECTIVE = re.compile(r"^--[ \t]*migrate:(\S*)(.*)$", re.MULTILINE)
# Whitespace (SQLite's set), `;` and complete comments: nothing that executes.
NOISE = re.compile(r"(?:[ \t\n\v\f\r;]+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
SHOWN_CHARS = 80  # of a statement or a name quoted in an error


class SqlFile(NamedTuple):
    """A parsed SQL migration: the statements of its sections and what it declares."""

    up: list[str]
    down: list[str] | None  # None: the file has no `-- migrate:down` section
    foreign_keys: bool  # False: the file declares `-- migrate:foreign_keys off`
    # False: that section's own marker says `transaction:false` (as in dbmate, the up
    # marker's options say nothing about the down section, nor the reverse).
    up_transaction: bool
    down_transaction: bool
    # The line of a `-- migrate:stub` in that section (0: none): the section is unwritten.
    up_stub: int = 0
    down_stub: int = 0
    # That section's `lock_timeout:SECONDS` option (0: wait for ever; None: the worker's).
    up_lock_timeout: float | None = None
    down_lock_timeout: float | None = None
    # Where each section's text is in the file: (start, end) offsets, (0, 0) for none; lint
    # reads a statement's line from them.
    up_span: tuple[int, int] = (0, 0)
    down_span: tuple[int, int] = (0, 0)


class SqlFileError(ValueError):
    """A SQL migration file that cannot be read as one; the text names the file and line."""


class UnwrittenSection(SqlFileError):
    """A section that still holds the `-- migrate:stub` line of `migrations-node new`."""

    def __init__(self, filename: str, section: str, line: int) -> None:
        undo = (" (or delete the whole section if the change cannot be undone)"
                if section == "down" else "")
        super().__init__(
            f"{filename} line {line}: the {section} section is an unwritten stub; write its"
            f" SQL, then delete this '-- migrate:stub' line{undo}"
        )


class IncompleteStatement(sqlite3.ProgrammingError):
    """The script ends inside a statement: an unclosed quote, comment or BEGIN ... END."""

    def __init__(self, statement: str, offset: int) -> None:
        super().__init__(f"incomplete SQL statement: {statement.strip()[:SHOWN_CHARS]!r}")
        self.statement = statement
        self.offset = offset  # where it starts in the script


class _Marker(NamedTuple):
    line: int
    start: int  # offset of the marker line
    body: int  # offset just past it, where the section's text begins


def decode(source: bytes, filename: str) -> str:
    """The text of a SQL file's bytes (a leading UTF-8 byte order mark is dropped).

    Raises SqlFileError naming the line of the first byte that is not UTF-8, or of a NUL
    character (no database takes one in SQL text, and SQLite's statement splitter cannot
    read past it).
    """
    try:
        text = source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = source.count(b"\n", 0, exc.start) + 1
        raise SqlFileError(
            f"{filename} line {line}: byte {exc.start} is not valid UTF-8; save the file as UTF-8"
        ) from None
    nul = text.find("\x00")
    if nul != -1:
        line = text.count("\n", 0, nul) + 1
        raise SqlFileError(f"{filename} line {line}: a NUL character, which SQL text cannot hold")
    return text


def split_statements(script: str) -> Iterator[str]:
    """Yield each statement of `script` in order, exactly as written.

    A statement ends at a `;` that sqlite3.complete_statement accepts, so one inside a
    string, a comment or a trigger's BEGIN ... END does not end it; the last statement may
    lack its `;`. Text holding only comments, whitespace and `;` yields nothing.

    Raises IncompleteStatement (a sqlite3.ProgrammingError) if the script ends inside a
    statement or a block comment.
    """
    start = 0
    end = script.find(";")
    while end != -1:
        candidate = script[start : end + 1]
        if sqlite3.complete_statement(candidate):
            if has_code(candidate):
                yield candidate
            start = end + 1
        end = script.find(";", end + 1)
    tail = script[start:]
    if has_code(tail):
        # The newline ends a trailing `--` comment, which would otherwise swallow the `;`.
        if not sqlite3.complete_statement(tail + "\n;"):
            raise IncompleteStatement(tail, start)
        yield tail


def parse(
    text: str,
    filename: str,
    split_statements: Callable[[str], Iterator[str]] = split_statements,
) -> SqlFile:
    """The sections of a SQL migration file, each split into its statements as written.

    A `-- migrate:stub` line is noted in its section's up_stub or down_stub (one before the
    up marker counts for the up section), not refused: see UnwrittenSection.

    Raises SqlFileError, naming `filename` and the line, for a file without a
    `-- migrate:up` line, a second up or down marker, a down marker before the up one,
    SQL before the up marker, an unknown directive or option, or a section that ends
    inside a statement. Each section is cut into statements by `split_statements`
    (SQLite's rules unless told otherwise; pg_sql.split_statements has PostgreSQL's),
    which must raise IncompleteStatement for a section that ends inside one.
    """
    markers: dict[str, _Marker] = {}
    foreign_keys, foreign_keys_line = True, 0
    stubs: list[tuple[int, int]] = []  # (line, offset) of each `-- migrate:stub`
    options_of: dict[str, SectionOptions] = {}
    for match in DIRECTIVE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        name, options = match[1], match[2].split()
        where = f"{filename} line {line}"
        if name in ("up", "down"):
            if name in markers:
                raise SqlFileError(
                    f"{where}: a second '-- migrate:{name}'"
                    f" (the first is on line {markers[name].line})"
                )
            if name == "down" and "up" not in markers:
                raise SqlFileError(f"{where}: '-- migrate:down' comes before '-- migrate:up'")
            options_of[name] = _section_options(options, name, where)
            markers[name] = _Marker(line, match.start(), match.end() + 1)
        elif name == "foreign_keys":
            if foreign_keys_line:
                raise SqlFileError(
                    f"{where}: a second '-- migrate:foreign_keys'"
                    f" (the first is on line {foreign_keys_line})"
                )
            foreign_keys, foreign_keys_line = _foreign_keys_option(options, where), line
        elif name == "stub":
            stubs.append((line, match.start()))
        else:
            raise SqlFileError(
                f"{where}: unknown directive {shown('-- migrate:' + name)}"
                " (known: up, down, foreign_keys)"
            )
    up = markers.get("up")
    if up is None:
        raise SqlFileError(f"{filename} has no '-- migrate:up' line, so it has nothing to apply")
    refuse_sql_before(text[: up.start], filename, "'-- migrate:up'")
    down = markers.get("down")
    up_end = len(text) if down is None else down.start
    up_statements = section_statements(
        split_statements, text[up.body : up_end], "up", up.line + 1, filename
    )
    down_statements = (
        None
        if down is None
        else section_statements(
            split_statements, text[down.body :], "down", down.line + 1, filename
        )
    )
    up_stub = down_stub = 0
    for line, offset in reversed(stubs):  # the first of a section's stub lines is named
        if down is not None and offset > down.start:
            down_stub = line
        else:
            up_stub = line
    down_options = options_of.get("down", SectionOptions())
    return SqlFile(
        up_statements, down_statements, foreign_keys, options_of["up"].transaction,
        down_options.transaction, up_stub, down_stub, options_of["up"].lock_timeout,
        down_options.lock_timeout, (up.body, up_end),
        (0, 0) if down is None else (down.body, len(text)),
    )


def has_code(sql: str) -> bool:
    """Whether `sql` holds anything but whitespace, comments and `;` (an unclosed
    block comment counts as code, so that it is reported rather than ignored)."""
    return code_start(sql) < len(sql)


def code_start(sql: str) -> int:
    """The offset of the first character of `sql` that is not noise; len(sql) if none."""
    match = NOISE.match(sql)
    return match.end() if match else 0  # NOISE matches the empty string: always a match


class SectionOptions(NamedTuple):
    """The options after a section's marker."""

    transaction: bool = True  # `transaction:false`: its statements run outside one
    lock_timeout: float | None = None  # `lock_timeout:SECONDS`, 0 for none (PostgreSQL)


def _section_options(options: list[str], marker: str, where: str) -> SectionOptions:
    """The options of a section marker: `transaction:true|false` (true when absent) and
    `lock_timeout:SECONDS` (a number, 0 or more: 0 waits for ever).

    Raises SqlFileError for any other option, a value of the wrong kind, or a repeated
    option.
    """
    values: dict[str, object] = {}
    for option in options:
        key, _, value = option.partition(":")
        if key not in SectionOptions._fields:
            raise SqlFileError(
                f"{where}: unknown option {shown(option)} after '-- migrate:{marker}'"
                " (known: transaction:true, transaction:false, lock_timeout:SECONDS)"
            )
        if key in values:
            raise SqlFileError(f"{where}: option {key} is given twice")
        if key == "transaction":
            if value not in ("true", "false"):
                raise SqlFileError(
                    f"{where}: option transaction takes true or false, not {shown(value)}"
                )
            values[key] = value == "true"
        else:
            values[key] = _seconds_option(key, value, where)
    return SectionOptions(**values)  # type: ignore[arg-type]


def _seconds_option(key: str, value: str, where: str) -> float:
    """A number of seconds, 0 or more (`3`, `0.5`, with an optional `s`)."""
    try:
        seconds = float(value.removesuffix("s"))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 2**63:
        raise SqlFileError(
            f"{where}: option {key} takes a number of seconds, 0 or more, not {shown(value)}"
        )
    return seconds


def _foreign_keys_option(options: list[str], where: str) -> bool:
    """What `-- migrate:foreign_keys` declares; raises SqlFileError unless it is off or on."""
    if options not in (["off"], ["on"]):
        raise SqlFileError(
            f"{where}: '-- migrate:foreign_keys' takes 'off' or 'on',"
            f" not {shown(' '.join(options))}"
        )
    return options == ["on"]


def refuse_sql_before(prologue: str, filename: str, marker: str) -> None:
    """Raises SqlFileError if `prologue`, the text before a file's first section `marker`
    (quoted as the error shows it), holds more than comments."""
    if has_code(prologue):
        first = code_start(prologue)
        line = prologue.count("\n", 0, first) + 1
        raise SqlFileError(
            f"{filename} line {line}: SQL before {marker} belongs to no section:"
            f" {shown(prologue[first:].strip())}"
        )


def section_statements(
    split_statements: Callable[[str], Iterator[str]],
    section: str,
    name: str,
    first_line: int,
    filename: str,
) -> list[str]:
    """The statements of one section's text `section` (the `name` section, starting on line
    `first_line` of `filename`), as `split_statements` cuts them.

    Raises SqlFileError naming the file and line if it ends inside a statement.
    """
    try:
        return list(split_statements(section))
    except IncompleteStatement as exc:
        begins = exc.offset + code_start(exc.statement)
        line = first_line + section.count("\n", 0, begins)
        raise SqlFileError(
            f"{filename} line {line}: the {name} section ends inside this statement"
            f" (an unclosed quote, comment or BEGIN ... END?): {shown(section[begins:])}"
        ) from None


def shown(text: str) -> str:
    """`text` quoted for an error, cut to its first SHOWN_CHARS characters."""
    return repr(text.rstrip()[:SHOWN_CHARS])


def parse_plain(
    text: str,
    filename: str,
    split_statements: Callable[[str], Iterator[str]] = split_statements,
) -> list[str]:
    """The statements of a file of plain SQL that runs whole, with no sections (a Flyway
    repeatable migration, `R__name.sql`), each exactly as written, cut by
    `split_statements` as parse() cuts a section.

    Raises SqlFileError naming `filename` and the line for a `-- migrate:` directive (such
    a file has no sections to mark, and what a `-- migrate:down` marked would run right
    after the rest) and for a file that ends inside a statement.
    """
    directive = DIRECTIVE.search(text)
    if directive is not None:
        line = text.count("\n", 0, directive.start()) + 1
        raise SqlFileError(
            f"{filename} line {line}: a repeatable migration is plain SQL, run whole and"
            f" never reverted, so {shown(directive[0])} has no place in it"
        )
    try:
        return list(split_statements(text))
    except IncompleteStatement as exc:
        begins = exc.offset + code_start(exc.statement)
        line = text.count("\n", 0, begins) + 1
        raise SqlFileError(
            f"{filename} line {line}: the file ends inside this statement (an unclosed quote,"
            f" comment or BEGIN ... END?): {shown(text[begins:])}"
        ) from None
