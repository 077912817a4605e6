"""PostgreSQL SQL text as migrations give it: quotes, comments, placeholders, transactions.

Pure text work, no connection: `split_sql` cuts text into code and the pieces PostgreSQL
reads as one token (strings, quoted names, comments, dollar quotes); the rest builds on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

OPENER = re.compile(r"['\"]|--|/\*|\$")
DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")  # $$ or $tag$; $1 is a parameter
BLOCK_COMMENT_PART = re.compile(r"/\*|\*/")
QMARK = re.compile(r"[?%]")
NAMED = re.compile(r"%|(?<!:):([^\W\d]\w*)")
WORD_OR_END = re.compile(r"\w+|;")


def _is_identifier_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def split_sql(text: str) -> Iterator[tuple[bool, str]]:
    """Cut SQL into pieces, in order, each (is_code, piece): code, or one whole string
    literal ('...', E'...' with backslash escapes), quoted identifier ("..."), comment
    (-- to the end of the line, nested /* */) or dollar-quoted string ($$...$$,
    $tag$...$tag$), delimiters included. An unclosed one runs to the end of the text
    (PostgreSQL reports it). Assumes standard_conforming_strings on, the default.
    """
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
            end = len(text) if close == -1 else close + len(tag.group())
        if opener > code_start:
            yield True, text[code_start:opener]
        yield False, text[start:end]
        code_start = position = end
    if code_start < len(text):
        yield True, text[code_start:]


def _quote_end(text: str, position: int, quote: str, escapes: bool) -> int:
    """The offset just past the quote closing one opened before `position`."""
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
    return len(text)


def _block_comment_end(text: str, position: int) -> int:
    depth = 1  # PostgreSQL's block comments nest
    for part in BLOCK_COMMENT_PART.finditer(text, position):
        depth += 1 if part.group() == "/*" else -1
        if depth == 0:
            return part.end()
    return len(text)


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


def transaction_control(text: str) -> str | None:
    """The leading words of the first statement in `text` that begins, ends or prepares a
    transaction (BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK, ABORT, PREPARE
    TRANSACTION), or None. SAVEPOINT, RELEASE and ROLLBACK TO are allowed; words in
    strings and comments, and the `;` of a BEGIN ATOMIC ... END function body, do not
    count.
    """
    skeleton = "".join(
        piece if is_code else (" " if piece[:2] in ("--", "/*") else " ' ")
        for is_code, piece in split_sql(text)
    )
    leading: list[str] = []  # the first words of the statement being read
    atomic_depth = 0  # inside BEGIN ATOMIC ... END, counting CASE ... END within
    previous = ""
    for match in WORD_OR_END.finditer(skeleton):
        word = match.group().upper()
        if word == ";":
            if atomic_depth == 0:
                if _controls_transaction(leading):
                    return " ".join(leading)
                leading = []
            previous = word
            continue
        if len(leading) < 3:
            leading.append(word)
        if word == "ATOMIC" and previous == "BEGIN" and len(leading) > 2:
            atomic_depth = 1
        elif atomic_depth and word == "CASE":
            atomic_depth += 1
        elif atomic_depth and word == "END":
            atomic_depth -= 1
        previous = word
    return " ".join(leading) if _controls_transaction(leading) else None


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
