"""MySQL and MariaDB SQL text cut into statements where the `mysql` client cuts it.

Pure text work, no connection. The client reads a file line by line and sends the server
each statement it ends with the current delimiter; split_statements ends them at the same
places, and yields each one as written:

    DELIMITER $$                          the client's own line: no statement, the
                                            delimiter is $$ from here on
    CREATE PROCEDURE p() BEGIN            one statement, yielded without its $$ (the
      SELECT 'a;b'; # any text            client does not send it); `;` is text here
    END$$
    DELIMITER ;
    /*!40101 SET NAMES utf8mb4 */;        a version comment's contents are code
    CREATE TRIGGER t BEFORE INSERT ON x   with `;` as the delimiter, a `;` inside a stored
      FOR EACH ROW BEGIN                    program's BEGIN ... END body does not end it:
        SET NEW.a = 1;                      this module's own rule (the client would cut
      END;                                  here), so files without DELIMITER lines split
                                            as their author meant

The server settings the client would ask about are taken at their defaults: `"` quotes a
string (not a name, as ANSI_QUOTES has it) and a backslash escapes the next character of a
string (NO_BACKSLASH_ESCAPES off).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from worker.sql_file import SHOWN_CHARS, IncompleteStatement

DEFAULT_DELIMITER = ";"
WHITESPACE = " \t\n\r\f\v"
QUOTES = "'\"`"
# A token of code: a word (MySQL's name characters: ASCII letters, digits, `_`, `$` and
# any character above ASCII), a variable or host (`@x`, `@@global.x`, the `@localhost` of
# a DEFINER), or one other character.
CODE_TOKEN = re.compile(
    r"(?P<word>[0-9A-Za-z_$\x80-\U0010ffff]+)"
    r"|(?P<at>@@?[0-9A-Za-z_$.\x80-\U0010ffff]*)"
    r"|.",
    re.DOTALL,
)
# `/*!`, `/*!50001`, MariaDB's `/*M!` and `/*M!100100`: what follows, to `*/`, is code.
VERSION_OPENER = re.compile(r"/\*M?!\d*")
# The client's DELIMITER command: the first word of its line, followed by a space or
# nothing; the rest of the line is its argument (read by _named_delimiter).
DELIMITER_LINE = re.compile(
    r"[ \t\r\f\v]*delimiter(?![^ \t\n\r\f\v])[ \t\r\f\v]*(?P<argument>[^\n]*)(?:\n|\Z)",
    re.IGNORECASE,
)
# The rest of a quoted string, name or argument, through its closing quote: a doubled quote is
# part of the text, and in a string (not a `quoted name`) so is the character after a
# backslash. Possessive, so that `'a''` is unclosed rather than `'a'` and an opened `'`.
QUOTE_REST = {
    "'": re.compile(r"(?:[^'\\]|\\.|'')*+'", re.DOTALL),
    '"': re.compile(r'(?:[^"\\]|\\.|"")*+"', re.DOTALL),
    "`": re.compile(r"(?:[^`]|``)*+`"),
}
WHITESPACE_RUN = re.compile(r"[ \t\n\r\f\v]+")
# What may end a run of code that no _Body needs to read: a quote, a comment, the end of a
# version comment (the delimiter is added to it).
CODE_RUN_END = r"['\"`#]|--|/\*|\*/"
QUOTED_ARGUMENT = re.compile(r"""'((?:[^']|'')*)'|"((?:[^"]|"")*)"|`((?:[^`]|``)*)`""")
# Whitespace, `;` and complete comments before a statement's first code (a version
# comment is code).
LEADING_NOISE = re.compile(
    r"(?:[ \t\n\r\f\v;]+|\#[^\n]*|--(?![^ \t\n\r\f\v])[^\n]*|/\*(?!M?!).*?\*/)*", re.DOTALL
)

# The kinds of token a _Body reads.
WORD = "word"  # upper-cased
NAME = "name"  # a `quoted name`, or a word after `.` (t.end is a column, not END)
STRING = "string"
OTHER = "other"  # one character, or a variable

# Words of a CREATE statement that may come between CREATE and a stored program's kind.
CREATE_OPTIONS = frozenset({"OR", "REPLACE", "DEFINER", "AGGREGATE"})
# The words of a procedure's characteristics, between its parameters and its body.
CHARACTERISTICS = frozenset({
    "COMMENT", "LANGUAGE", "SQL", "NOT", "DETERMINISTIC", "CONTAINS", "NO", "READS",
    "MODIFIES", "DATA", "SECURITY", "DEFINER", "INVOKER",
})
# END followed by one of these closes a block whose opening word was not counted.
UNCOUNTED_ENDS = frozenset({"IF", "LOOP", "WHILE", "REPEAT", "FOR"})


def split_statements(script: str) -> Iterator[str]:
    """Yield each statement of `script` in order, exactly as written, by the `mysql`
    client's rules: the contract of sql_file.split_statements, for MySQL and MariaDB.

    A statement ends at the current delimiter (`;` until a DELIMITER line names another)
    in code: not inside a string ('...' or "...", with backslash escapes and doubled
    quotes), a `quoted name`, or a comment (`#` or `-- ` to the end of the line, or
    /* ... */); the contents of a version comment (/*! ... */, /*M! ... */) are code. A
    statement ending with `;` keeps it; one ending with another delimiter is yielded
    without it, as the client sends it. With `;` as the delimiter, a `;` inside the
    BEGIN ... END body of CREATE PROCEDURE, FUNCTION, TRIGGER or EVENT, or of MariaDB's
    BEGIN NOT ATOMIC ... END, does not end the statement (see _Body). The last statement
    may lack its delimiter. DELIMITER lines, and text holding only comments, whitespace
    and `;`, yield nothing.

    Raises sql_file.IncompleteStatement (a sqlite3.ProgrammingError, which sql_file.parse
    turns into an error naming the file and line), with the statement from its first code
    and that code's offset, if the script ends inside a statement: inside a string, a
    quoted name, a block or version comment, or (with `;` as the delimiter) a BEGIN ...
    END body.
    """
    return _Reader(script).statements()


def first_line(statement: str) -> str:
    """The first line of `statement`'s code, past the comments and blank lines before it,
    stripped and cut to sql_file.SHOWN_CHARS characters: how an error names a statement
    beside its number. An empty string if it holds no code."""
    match = LEADING_NOISE.match(statement)
    code = match.end() if match else 0  # LEADING_NOISE matches the empty string: always
    return statement[code:].split("\n", 1)[0].strip(WHITESPACE)[:SHOWN_CHARS]


class _Reader:
    """One pass over a script, a piece at a time: where each statement begins and ends."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.delimiter = DEFAULT_DELIMITER
        self._code_run_end = self._code_run_end_for(self.delimiter)
        self.position = 0
        self._begin_statement(0)

    def _begin_statement(self, start: int) -> None:
        self.start = start  # where its text begins: just past the delimiter before it
        self.code: int | None = None  # where its first code is
        self.body = _Body()
        # Inside /*! ... */ (only to tell an unclosed one at the end of the text: the
        # client keeps no such state, and a delimiter inside one ends the statement).
        self.in_version = False

    def statements(self) -> Iterator[str]:
        script = self.script
        while self.position < len(script):
            statement = self._read_piece()
            if statement is not None:
                yield statement
        if self.code is None:
            return
        if self.in_version or (self.delimiter == DEFAULT_DELIMITER and self.body.open):
            raise IncompleteStatement(script[self.code :], self.code)
        yield script[self.start :]

    def _read_piece(self) -> str | None:
        """Read the piece of text at self.position; the statement it ends, if it ends one."""
        script, at = self.script, self.position
        if self.code is None and (at == 0 or script[at - 1] == "\n"):
            line = DELIMITER_LINE.match(script, at)
            if line is not None:
                self.delimiter = _named_delimiter(line["argument"]) or self.delimiter
                self._code_run_end = self._code_run_end_for(self.delimiter)
                self.position = line.end()
                self._begin_statement(line.end())
                return None
        # Looked for first, at every character of code, as the client does: `$$` ends a
        # statement even right after a word (`END$$`), and `//` is no comment.
        if script.startswith(self.delimiter, at):
            return self._end_statement(at)
        char = script[at]
        if char in WHITESPACE:
            # One at a time before a statement's code, so that each line's start is seen.
            run = WHITESPACE_RUN.match(script, at) if self.code is not None else None
            self.position = at + 1 if run is None else run.end()
        elif char == "#" or (
            script.startswith("--", at) and (at + 2 == len(script) or script[at + 2] in WHITESPACE)
        ):
            newline = script.find("\n", at)
            self.position = len(script) if newline == -1 else newline + 1
        elif script.startswith("/*", at):
            version = VERSION_OPENER.match(script, at)
            if version is not None:
                self._code_at(at)
                self.in_version = True
                self.position = version.end()
            else:
                close = script.find("*/", at + 2)
                if close == -1:
                    raise self._incomplete(at)
                self.position = close + 2
        elif self.in_version and script.startswith("*/", at):
            self.in_version = False
            self.position = at + 2
        elif char in QUOTES:
            self._code_at(at)
            rest = QUOTE_REST[char].match(script, at + 1)
            if rest is None:
                raise self._incomplete(at)
            self.body.read(char, NAME if char == "`" else STRING)
            self.position = rest.end()
        else:
            self._read_code_token(at)
        return None

    @staticmethod
    def _code_run_end_for(delimiter: str) -> re.Pattern[str]:
        return re.compile(f"{re.escape(delimiter)}|{CODE_RUN_END}")

    def _read_code_token(self, at: int) -> None:
        script, delimiter = self.script, self.delimiter
        if self.code is not None and self.body.idle:
            # Nothing left to read word by word (a long INSERT's values): on to what
            # may end the run.
            end = self._code_run_end.search(script, at + 1)
            self.position = len(script) if end is None else end.start()
            return
        token = CODE_TOKEN.match(script, at)
        assert token is not None  # `.` with DOTALL matches any character
        end = token.end()
        # A delimiter that begins inside a word ends it there (`a$$` with `$$`).
        cut = script.find(delimiter, at + 1, end + len(delimiter) - 1)
        if cut != -1:
            end = cut
        text = script[at:end]
        if text != ";":  # with another delimiter, a lone `;` is no code
            self._code_at(at)
        kind = WORD if token.lastgroup == "word" else OTHER
        self.body.read(text, kind)
        self.position = end

    def _end_statement(self, at: int) -> str | None:
        """The statement the delimiter at `at` ends (None if it holds no code), or None
        without ending it if the delimiter is a `;` inside a stored program's body."""
        end = at + len(self.delimiter)
        self.position = end
        if self.delimiter == DEFAULT_DELIMITER:
            self.body.read(";", OTHER)
            if self.body.open:
                return None
            text = self.script[self.start : end]
        else:
            text = self.script[self.start : at]
        has_code = self.code is not None
        self._begin_statement(end)
        return text if has_code else None

    def _code_at(self, at: int) -> None:
        if self.code is None:
            self.code = at

    def _incomplete(self, at: int) -> IncompleteStatement:
        """The error for a script ending inside the quote or comment opened at `at` (an
        unclosed block comment counts as code, so that it is reported rather than ignored)."""
        code = at if self.code is None else self.code
        return IncompleteStatement(self.script[code:], code)


def _named_delimiter(argument: str) -> str | None:
    """The delimiter a DELIMITER line's `argument` (the rest of its line) names, as the
    client reads it: its first word, or a quoted string (doubled quotes in it undone),
    the rest of the line ignored. None if it names none or holds a backslash: the client
    refuses both and keeps its delimiter."""
    quoted = QUOTED_ARGUMENT.match(argument)
    if quoted is not None:
        index = quoted.lastindex or 1
        named = quoted[index].replace(QUOTES[index - 1] * 2, QUOTES[index - 1])
    elif argument[:1] in QUOTES:
        return None  # an unclosed quote
    else:
        words = argument.split()
        named = words[0] if words else ""
    if not named or "\\" in named:
        return None
    return named


class _Body:
    """Whether a `;` falls inside a stored program's BEGIN ... END body, read from one
    statement's tokens of code in order (comments left out).

    Only a CREATE [OR REPLACE] [DEFINER = user] [AGGREGATE] PROCEDURE, FUNCTION, TRIGGER or
    EVENT whose body begins with BEGIN (or `label: BEGIN`), or a statement that begins with
    MariaDB's anonymous `[label:] BEGIN NOT ATOMIC`, has such a body: any other BEGIN (a
    transaction's `BEGIN;`), CASE or END is a plain word. The body begins after a
    procedure's parameters and characteristics, at a function's first BEGIN or RETURN
    (whichever comes first), after a trigger's FOR EACH ROW [FOLLOWS|PRECEDES name], after
    an event's DO.

    Inside, BEGIN and CASE open a block and END (or END CASE) closes one: END IF, END
    LOOP, END WHILE, END REPEAT and END FOR close blocks whose opening words were never
    counted, so IF( and IF EXISTS, REPEAT( and FOR UPDATE need no telling apart, and a
    CASE expression closes with END as a CASE statement does. An unquoted name spelled
    BEGIN, CASE or END inside a body (`SELECT end FROM t`) miscounts: quote it, qualify it
    (`t.end`), or use a DELIMITER line.
    """

    def __init__(self) -> None:
        self._step: Callable[[str, str], None] = self._first_token
        self._depth = 0  # blocks open in the body
        self._ending = False  # an END read, and not yet the word after it
        self._parentheses = 0
        self._previous = ""  # the token before, upper-cased if a word
        self._waiting: tuple[str, ...] = ()  # the words _expect still wants

    @property
    def idle(self) -> bool:
        """Whether no token can change what `open` says any more: the statement is no
        stored program, or its body has ended."""
        return self._step == self._ignore

    @property
    def open(self) -> bool:
        """Whether the body has begun and not yet ended (an END just read ends a block)."""
        return self._depth - self._ending > 0

    def read(self, token: str, kind: str) -> None:
        """Read the next token of code: a word, a `quoted name` or string (given as its
        opening quote alone), or any other character (a variable whole)."""
        if kind == WORD:
            if self._previous == ".":
                kind = NAME
            else:
                token = token.upper()
        if self._ending:
            self._ending = False
            counted = not (kind == WORD and token in UNCOUNTED_ENDS)
            if counted:
                self._depth -= 1
                if self._depth == 0:
                    self._step = self._ignore
            if not counted or (kind == WORD and token == "CASE"):
                self._previous = token
                return
        if token == "(":
            self._parentheses += 1
        elif token == ")":
            self._parentheses = max(self._parentheses - 1, 0)
        self._step(token, kind)
        self._previous = token

    # -- the states: each reads one token and picks the next state ---------------------

    def _ignore(self, token: str, kind: str) -> None:
        pass

    def _first_token(self, token: str, kind: str) -> None:
        if kind == WORD and token == "CREATE":
            self._step = self._create
        elif kind == WORD and token == "BEGIN":
            self._expect(("NOT", "ATOMIC"))
        elif kind in (WORD, NAME):
            self._step = self._anonymous_label
        else:
            self._step = self._ignore

    def _anonymous_label(self, token: str, kind: str) -> None:
        if token == ":":
            self._expect(("BEGIN", "NOT", "ATOMIC"))
        else:
            self._step = self._ignore

    def _expect(self, words: tuple[str, ...]) -> None:
        self._waiting = words
        self._step = self._expected

    def _expected(self, token: str, kind: str) -> None:
        if kind != WORD or token != self._waiting[0]:
            self._step = self._ignore
        elif len(self._waiting) > 1:
            self._waiting = self._waiting[1:]
        else:
            self._open_body()

    def _create(self, token: str, kind: str) -> None:
        if kind != WORD or token in CREATE_OPTIONS:
            return  # the `=`, 'user', `user`, @host, ( ) of a DEFINER too
        if self._previous == "=":
            return  # DEFINER = name@host, or CURRENT_USER
        if token == "PROCEDURE":
            self._step = self._procedure_parameters
        elif token == "FUNCTION":
            self._step = self._function_header
        elif token == "TRIGGER":
            self._step = self._trigger_header
        elif token == "EVENT":
            self._step = self._event_header
        else:
            self._step = self._ignore

    def _procedure_parameters(self, token: str, kind: str) -> None:
        if token == ")" and self._parentheses == 0:
            self._step = self._procedure_characteristics

    def _procedure_characteristics(self, token: str, kind: str) -> None:
        if not ((kind == WORD and token in CHARACTERISTICS) or kind == STRING):
            self._body_start(token, kind)

    def _function_header(self, token: str, kind: str) -> None:
        if kind == WORD and self._parentheses == 0:
            if token == "BEGIN":
                self._open_body()
            elif token == "RETURN":
                self._step = self._ignore

    def _trigger_header(self, token: str, kind: str) -> None:
        if kind == WORD and token == "ROW" and self._previous == "EACH":
            self._step = self._trigger_order

    def _trigger_order(self, token: str, kind: str) -> None:
        if kind == WORD and token in ("FOLLOWS", "PRECEDES"):
            self._step = self._trigger_other
        else:
            self._body_start(token, kind)

    def _trigger_other(self, token: str, kind: str) -> None:
        self._step = self._body_start

    def _event_header(self, token: str, kind: str) -> None:
        if kind == WORD and token == "DO" and self._parentheses == 0:
            self._step = self._body_start

    def _body_start(self, token: str, kind: str) -> None:
        if kind == WORD and token == "BEGIN":
            self._open_body()
        elif kind in (WORD, NAME):
            self._step = self._body_label
        else:
            self._step = self._ignore

    def _body_label(self, token: str, kind: str) -> None:
        self._step = self._labelled_body if token == ":" else self._ignore

    def _labelled_body(self, token: str, kind: str) -> None:
        if kind == WORD and token == "BEGIN":
            self._open_body()
        else:
            self._step = self._ignore

    def _open_body(self) -> None:
        self._depth = 1
        self._step = self._in_body

    def _in_body(self, token: str, kind: str) -> None:
        if kind != WORD:
            return
        if token in ("BEGIN", "CASE"):
            self._depth += 1
        elif token == "END":
            self._ending = True
