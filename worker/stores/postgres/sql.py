"""PostgreSQL SQL text as migrations give it: quotes, comments, statements, placeholders,
transactions.

Pure text work, no connection: `split_sql` cuts text into code and the pieces PostgreSQL
reads as one token (strings, quoted names, comments, dollar quotes); the rest builds on it.

    split_sql(text)            code | 'string' | "name" | -- comment | /* comment */ | $$body$$
      _statements(text)          where each statement ends, and its first words
        split_statements(text)     the statements of a .sql migration, as written
        statements_at(text)        the same, each with where its code begins (lint's lines)
        transaction_control(text)  BEGIN, COMMIT, ... found in code
        leading_tokens(text, n)    each statement's first tokens: words, "names", symbols
    translate(text)            ? and :name made psycopg's placeholders
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, NamedTuple

from worker.sql_file import IncompleteStatement

OPENER = re.compile(r"['\"]|--|/\*|\$")
DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")  # $$ or $tag$; $1 is a parameter
BLOCK_COMMENT_PART = re.compile(r"/\*|\*/")
QMARK = re.compile(r"[?%]")
NAMED = re.compile(r"%|(?<!:):([^\W\d]\w*)")
# In code: a word (the characters of PostgreSQL's names and keywords: ASCII letters,
# digits, `_`, `$` and any character above ASCII), a `;` or parenthesis, or any other
# character that is not one of PostgreSQL's spaces.
CODE_PART = re.compile(r"(?P<word>[0-9A-Za-z_$\x80-\U0010ffff]+)|[;()]|[^ \t\n\r\f\v]")


def _is_identifier_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def split_sql(text: str) -> Iterator[tuple[bool, str]]:
    """Cut SQL into pieces, in order, each (is_code, piece): code, or one whole string
    literal ('...', E'...' with backslash escapes), quoted identifier ("..."), comment
    (-- to the end of the line, nested /* */) or dollar-quoted string ($$...$$,
    $tag$...$tag$), delimiters included. An unclosed one runs to the end of the text
    (PostgreSQL reports it). Assumes standard_conforming_strings on, the default.
    """
    for is_code, start, end, _closed in _pieces(text):
        yield is_code, text[start:end]


def _pieces(text: str) -> Iterator[tuple[bool, int, int, bool]]:
    """split_sql's pieces as (is_code, start, end, closed); `closed` is False only for a
    last piece that the text ends inside of (a `--` comment needs no newline to close)."""
    code_start = position = 0
    while (match := OPENER.search(text, position)) is not None:
        start = opener = match.start()
        token = match.group()
        if token == "'":
            escapes = (
                start > 0 and text[start - 1] in "eE"
                and not (start > 1 and _is_identifier_char(text[start - 2]))
            )
            end = _quote_end(text, start + 1, "'", escapes)
        elif token == '"':
            end = _quote_end(text, start + 1, '"', False)
        elif token == "--":
            newline = text.find("\n", start)
            end = len(text) if newline == -1 else newline + 1
        elif token == "/*":
            end = _block_comment_end(text, start + 2)
        else:
            tag = DOLLAR_TAG.match(text, start)
            if tag is None or (start > 0 and _is_identifier_char(text[start - 1])):
                position = start + 1  # $1, or a $ inside a name such as a$b
                continue
            close = text.find(tag.group(), tag.end())
            end = -1 if close == -1 else close + len(tag.group())
        if opener > code_start:
            yield True, code_start, opener, True
        if end == -1:
            yield False, start, len(text), False
            return
        yield False, start, end, True
        code_start = position = end
    if code_start < len(text):
        yield True, code_start, len(text), True


def _quote_end(text: str, position: int, quote: str, escapes: bool) -> int:
    """The offset just past the quote closing one opened before `position`; -1 if none."""
    while position < len(text):
        char = text[position]
        if escapes and char == "\\":
            position += 2
        elif char == quote:
            if text.startswith(quote, position + 1):  # doubled: part of the text
                position += 2
            else:
                return position + 1
        else:
            position += 1
    return -1


def _block_comment_end(text: str, position: int) -> int:
    """The offset just past the `*/` closing a comment opened before `position`; -1 if none."""
    depth = 1  # PostgreSQL's block comments nest
    for part in BLOCK_COMMENT_PART.finditer(text, position):
        depth += 1 if part.group() == "/*" else -1
        if depth == 0:
            return part.end()
    return -1


def translate(text: str, named: bool = False) -> str:
    """SQLite's placeholders made psycopg's: `?` becomes `%s` (or, with `named`, `:name`
    becomes `%(name)s`, `::` casts untouched) in code only, and every `%` becomes `%%`,
    everywhere, because psycopg reads `%` in strings and comments too."""
    pattern = NAMED if named else QMARK
    pieces = []
    for is_code, piece in split_sql(text):
        if is_code:
            pieces.append(pattern.sub(_placeholder, piece))
        else:
            pieces.append(piece.replace("%", "%%"))
    return "".join(pieces)


def _placeholder(match: re.Match[str]) -> str:
    if match.group() == "%":
        return "%%"
    if match.group() == "?":
        return "%s"
    return f"%({match[1]})s"


def to_psycopg(
    text: str, params: Sequence[Any] | Mapping[str, Any] | None
) -> tuple[str, Sequence[Any] | Mapping[str, Any] | None]:
    """The query and parameters to hand psycopg for SQLite-style `text` and `params`.

    Without parameters the text goes as written (psycopg then reads no placeholder, so
    `%`, `?` operators and `$1` in function bodies need nothing). With a sequence, `?` are
    the placeholders; with a mapping, `:name`. Limits: with parameters, every `?` in code
    is a placeholder, so PostgreSQL's `?`, `?|` and `?&` jsonb operators must be written
    as jsonb_exists(), jsonb_exists_any(), jsonb_exists_all(); with a mapping, an array
    slice `a[1:n]` reads `:n` as a name (write `a[1: n]`); SQLite's `?NNN`, `@name` and
    `$name` forms are not offered.
    """
    if not params:
        return text, None
    return translate(text, named=isinstance(params, Mapping)), params


class _Statement(NamedTuple):
    start: int  # just past the `;` ending the statement before it; 0 for the first
    code: int | None  # where its first code is; None: only spaces, comments and `;`
    end: int  # just past its own `;`; the text's length for the last statement
    words: list[str]  # its first three words, upper-cased
    complete: bool  # False: the text ends inside it (a quote, comment, ( or BEGIN ATOMIC)


def _statements(text: str) -> Iterator[_Statement]:
    """Every statement of `text` in order, those of only spaces and comments included.

    A statement ends at a `;` in code, but not inside parentheses (a rule's action list;
    psql does the same) nor inside a SQL-standard function body, BEGIN ATOMIC ... END,
    counting CASE ... END within. Words in strings, quoted names, comments and dollar-quoted
    bodies (a plpgsql function's BEGIN ... END) do not count.
    """
    start, code, words = 0, None, []
    parentheses = 0
    atomic_depth = 0  # inside BEGIN ATOMIC ... END, counting CASE ... END within
    previous = ""  # the word or `;` before, across comments and quotes
    closed = True
    for is_code, piece_start, piece_end, closed in _pieces(text):
        if not is_code:
            # An unclosed block comment counts as code, so that it is reported as one.
            if code is None and (not closed or text[piece_start] not in "-/"):
                code = piece_start
            continue
        for part in CODE_PART.finditer(text, piece_start, piece_end):
            token = part.group().upper()
            if token == ";":
                if parentheses == 0 and atomic_depth == 0:
                    yield _Statement(start, code, part.end(), words, True)
                    start, code, words = part.end(), None, []
                previous = token
                continue
            if code is None:
                code = part.start()
            if token == "(":
                parentheses += 1
            elif token == ")":
                parentheses = max(parentheses - 1, 0)  # as psql: a stray ) is PostgreSQL's
            if part.lastgroup != "word":
                continue
            if len(words) < 3:
                words.append(token)
            if token == "ATOMIC" and previous == "BEGIN" and len(words) > 2:
                atomic_depth = 1
            elif atomic_depth and token == "CASE":
                atomic_depth += 1
            elif atomic_depth and token == "END":
                atomic_depth -= 1
            previous = token
    if start < len(text):
        complete = closed and parentheses == 0 and atomic_depth == 0
        yield _Statement(start, code, len(text), words, complete)


def split_statements(script: str) -> Iterator[str]:
    """Yield each statement of `script` in order, exactly as written, by PostgreSQL's
    rules: the contract of sql_file.split_statements, for a PostgreSQL database.

    A statement ends at a `;` in code (see _statements), so one inside a string, quoted
    name, comment, dollar-quoted body ($$ ... $$, $tag$ ... $tag$), parentheses or
    BEGIN ATOMIC ... END does not end it; each statement runs from just past the `;`
    before it through its own `;`, and the last may lack its `;`. Text holding only
    comments, whitespace and `;` yields nothing.

    Raises sql_file.IncompleteStatement (a sqlite3.ProgrammingError, which
    sql_file.parse turns into an error naming the file and line), with the statement
    from its first code and that code's offset, if the script ends inside a statement,
    a string, a quoted name, a block comment or a dollar quote.
    """
    for _, statement in statements_at(script):
        yield statement


def statements_at(script: str) -> Iterator[tuple[int, str]]:
    """split_statements's statements, each with the offset in `script` of its first code
    (where a person reads it as beginning: past the comments before it), for lint's lines.

    Raises sql_file.IncompleteStatement as split_statements does.
    """
    for statement in _statements(script):
        if statement.code is None:
            continue
        if not statement.complete:
            raise IncompleteStatement(script[statement.code :], statement.code)
        yield statement.code, script[statement.start : statement.end]


def transaction_control(text: str) -> str | None:
    """The leading words of the first statement in `text` that begins, ends or prepares a
    transaction (BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK, ABORT, PREPARE
    TRANSACTION), or None. SAVEPOINT, RELEASE and ROLLBACK TO are allowed; words in
    strings and comments, and a `;` inside parentheses or a BEGIN ATOMIC ... END function
    body, do not count.
    """
    for statement in _statements(text):
        if _controls_transaction(statement.words):
            return " ".join(statement.words)
    return None


WORD, QUOTED_NAME, OTHER = "word", "quoted name", "other"  # the kinds of Token


class Token(NamedTuple):
    """One token of a statement: a WORD (a keyword or an unquoted name, as written), a
    QUOTED_NAME (its name, the quotes taken off and doubled ones undone) or OTHER (any
    other character of code, or a whole string or dollar-quoted body, as written)."""

    kind: str
    text: str


def leading_tokens(text: str, count: int) -> Iterator[list[Token]]:
    """The first `count` tokens of each statement of `text` that holds code, in order (a
    statement ends where _statements says); comments are skipped, wherever they are."""
    for statement in _statements(text):
        if statement.code is not None:
            yield list(islice(_tokens(text[statement.code : statement.end]), count))


def _tokens(text: str) -> Iterator[Token]:
    for is_code, start, end, closed in _pieces(text):
        if is_code:
            for part in CODE_PART.finditer(text, start, end):
                yield Token(WORD if part.lastgroup == "word" else OTHER, part.group())
        elif text.startswith(("--", "/*"), start):
            continue
        elif text[start] == '"' and closed:
            yield Token(QUOTED_NAME, text[start + 1 : end - 1].replace('""', '"'))
        else:
            yield Token(OTHER, text[start:end])


def _controls_transaction(words: list[str]) -> bool:
    if not words:
        return False
    first, rest = words[0], words[1:]
    if first in ("BEGIN", "COMMIT", "END", "ABORT"):
        return True
    if first == "START":
        return rest[:1] == ["TRANSACTION"]
    if first == "PREPARE":
        return rest[:1] == ["TRANSACTION"]
    if first == "ROLLBACK":
        if rest[:1] in (["WORK"], ["TRANSACTION"]):
            rest = rest[1:]
        return rest[:1] != ["TO"]
    return False
