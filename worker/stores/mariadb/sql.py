"""MySQL and MariaDB statement text as migrations give it: what a statement does to the
transaction around it, and `?` placeholders made PyMySQL's.

    pieces(text)            code | 'string' | "string" | `name` | # -- /* */ comments
      leading_words(text)     the first words of code (`/*! ... */` is code)
        commits_at_once(text)   DDL and its kind: the server commits before and after it
        transaction_control(text)  BEGIN, COMMIT, ROLLBACK, ... that the engine owns
      translate(text, named)  ? and :name made %s and %(name)s; % doubled

Pure text, no connection. Which statements commit at once is MariaDB's list ("SQL
statements that cause an implicit commit"); a statement whose first words are not known to
stay in the transaction counts as committing, which costs a step record and never hides
what stays.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

OPENER = re.compile(r"['\"`#]|--(?=\s|\Z)|/\*")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
VERSION_COMMENT = re.compile(r"/\*M?!\d*")
NAMED = re.compile(r"(?<!:):([A-Za-z_]\w*)")

# First words of statements that stay inside the open transaction (ROLLBACK: ROLLBACK TO
# a savepoint, since a whole ROLLBACK is refused before it is sent).
STAYS = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES", "TABLE", "DO",
    "SAVEPOINT", "RELEASE", "ROLLBACK", "HANDLER", "EXPLAIN", "DESCRIBE", "DESC", "SHOW", "HELP",
    "PREPARE", "EXECUTE", "DEALLOCATE", "SIGNAL", "RESIGNAL", "GET", "USE",
})
# SET stays unless it is one of these (SET autocommit = 1 commits; the others are DCL).
SET_COMMITS = re.compile(r"\s*(?:(?:SESSION|@@SESSION\.|@@)?\s*autocommit\b|PASSWORD\b|ROLE\b"
                         r"|DEFAULT\s+ROLE\b)", re.IGNORECASE)


def pieces(text: str) -> Iterator[tuple[bool, int, int]]:
    """(is_code, start, end) for each run of code and each string, quoted name or comment,
    in order; an executable comment (`/*! ... */`, `/*M! ... */`) is code, as the server
    reads it. An unclosed string or comment runs to the end of the text."""
    position = 0
    while True:
        found = OPENER.search(text, position)
        if found is None:
            if position < len(text):
                yield True, position, len(text)
            return
        start = found.start()
        opener = found.group()
        if opener == "/*" and VERSION_COMMENT.match(text, start):
            # Code: the comment's markers are skipped, what is inside is read as code.
            marker = VERSION_COMMENT.match(text, start)
            if start > position:
                yield True, position, start
            yield False, start, marker.end()  # the marker itself; what follows is code
            position = marker.end()
            continue
        if start > position:
            yield True, position, start
        if opener in ("#", "--"):
            newline = text.find("\n", start)
            end = len(text) if newline == -1 else newline + 1
        elif opener == "/*":
            close = text.find("*/", start + 2)
            end = len(text) if close == -1 else close + 2
        else:
            end = _quote_end(text, start, opener)
        yield False, start, end
        position = end


def _quote_end(text: str, start: int, quote: str) -> int:
    """Just past the quote that closes the one at `start`: a doubled quote is the quote
    itself, and in strings (not backtick names) a backslash escapes the next character."""
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == "\\" and quote != "`":
            position += 2
            continue
        if char == quote:
            if text.startswith(quote, position + 1):
                position += 2
                continue
            return position + 1
        position += 1
    return len(text)


def leading_words(text: str, count: int = 3) -> list[str]:
    """The first `count` words of code, upper-cased; strings and comments end the look
    (a word after them is not what the statement is)."""
    words: list[str] = []
    for is_code, start, end in pieces(text):
        if not is_code:
            if text.startswith(("#", "--", "/*"), start):
                continue
            break
        for match in WORD.finditer(text, start, end):
            words.append(match.group().upper())
            if len(words) == count:
                return words
    return words


def commits_at_once(text: str) -> bool:
    """Whether the server commits before and after this statement (DDL, account
    statements, LOCK TABLES, ...), so that it cannot be rolled back."""
    words = leading_words(text, 3)
    if not words:
        return False
    first = words[0]
    if first in ("CREATE", "DROP") and words[1:2] == ["TEMPORARY"]:
        return False  # temporary tables are the session's and commit nothing
    if first == "SET":
        after = _after_word(text, "SET")
        return SET_COMMITS.match(after) is not None
    if transaction_control(text) is not None:
        return False  # refused before it runs
    return first not in STAYS  # BEGIN NOT ATOMIC ... END and CALL may hold DDL: they count


# The table a DDL statement changes, and only it: CREATE TABLE, ALTER TABLE (not one that
# renames: what names the old name changes too), CREATE INDEX ... ON, DROP INDEX ... ON.
_NAME = r"(`(?:[^`]|``)+`|[A-Za-z0-9_$]+(?![A-Za-z0-9_$]))(?!\s*\.)"
_ONE_TABLE = (
    re.compile(r"\s*CREATE\s+(?:OR\s+REPLACE\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME,
               re.IGNORECASE),
    re.compile(r"\s*ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?" + _NAME,
               re.IGNORECASE),
    re.compile(r"\s*(?:CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?"
               r"|DROP\s+)INDEX\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"
               r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$]+)\s+ON\s+" + _NAME, re.IGNORECASE),
)
_RENAMES = re.compile(r"\bRENAME\b", re.IGNORECASE)


def schema_targets(text: str) -> set[str] | None:
    """The tables of the current database whose schema objects this statement may change:
    none for one that stays in the transaction (data), the one table of a statement of
    _ONE_TABLE, and None (any object) for every other statement that commits at once, for
    a rename, a qualified name, and what runs other statements (CALL, EXECUTE, a compound
    statement)."""
    words = leading_words(text, 2)
    if not words:
        return set()
    if words[0] in ("CALL", "EXECUTE", "PREPARE") or (words[0] == "SET" and re.search(
            r"\bFOR\b", text, re.IGNORECASE)):
        return None  # SET STATEMENT ... FOR <statement>
    if not commits_at_once(text):
        return set()
    # The code with strings and comments blanked out; quoted names kept.
    code = "".join(text[start:end] if is_code or text.startswith("`", start)
                   else " " * (end - start) for is_code, start, end in pieces(text))
    if _RENAMES.search(code) is not None:
        return None
    for pattern in _ONE_TABLE:
        match = pattern.match(code)
        if match is not None:
            name = match.group(1)
            return {name[1:-1].replace("``", "`") if name.startswith("`") else name}
    return None


def transaction_control(text: str) -> str | None:
    """The leading words of a statement that begins or ends the transaction the engine
    owns (BEGIN, START TRANSACTION, COMMIT, ROLLBACK but ROLLBACK TO a savepoint, XA,
    SET autocommit), or None."""
    words = leading_words(text, 3)
    if not words:
        return None
    first = words[0]
    if first == "BEGIN" and words[1:2] == ["NOT"]:
        return None  # BEGIN NOT ATOMIC ... END: a compound statement, not a transaction
    if first in ("BEGIN", "COMMIT", "XA"):
        return " ".join(words[:2])
    if first == "START" and words[1:2] == ["TRANSACTION"]:
        return "START TRANSACTION"
    if first == "ROLLBACK":
        rest = words[1:]
        if rest[:1] == ["WORK"]:
            rest = rest[1:]
        return None if rest[:1] == ["TO"] else "ROLLBACK"
    if first == "SET" and re.match(r"\s*(?:SESSION\s+|@@SESSION\.|@@)?autocommit\b",
                                   _after_word(text, "SET"), re.IGNORECASE):
        return "SET autocommit"
    return None


def _after_word(text: str, word: str) -> str:
    found = re.search(rf"\b{word}\b", text, re.IGNORECASE)
    return "" if found is None else text[found.end():]


def translate(text: str, named: bool = False) -> str:
    """`?` (or, `named`, `:name`) in code made PyMySQL's %s (%(name)s), and every other `%`
    doubled, so that a value is never read as SQL."""
    out: list[str] = []
    for is_code, start, end in pieces(text):
        part = text[start:end]
        if not is_code:
            out.append(part.replace("%", "%%"))
            continue
        part = part.replace("%", "%%")
        part = NAMED.sub(r"%(\1)s", part) if named else part.replace("?", "%s")
        out.append(part)
    return "".join(out)


def to_pymysql(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[str, Any]:
    """A statement and its parameters as PyMySQL takes them: without parameters, the text
    as written (PyMySQL formats only when given some)."""
    if isinstance(params, Mapping):
        return (translate(sql, named=True), dict(params)) if params else (sql, None)
    values = tuple(params)
    return (translate(sql), values) if values else (sql, None)
