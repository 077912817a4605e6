"""Statement by statement, where DDL commits at once (MariaDB, MySQL): what stays of a
migration step that stops partway, kept exactly, so that nobody has to guess.

    engine: StatementSteps(version, name, action, resume)   one per step taken
    the store's db, for each statement:
        number, run = steps.next(sql)             a resume skips the statements done
        it commits at once?                       (DDL; each statement outside a transaction)
            save steps.partial(number - 1, running=number)   COMMIT, with the DML before it
            run it                                           the server commits it
            save steps.partial(number)                       COMMIT
        else: run it in the step's transaction    (DML: undone with the step if it fails)
    the step ends: record()/unrecord() drop its Partial in the step's own transaction

A worker killed between a statement that commits and the record after it leaves that one
statement `running`: the next worker says which, and that it may or may not have taken
effect, instead of guessing. Statements sent through the db's execute, executemany and
executescript are numbered; query() is numbered only for a statement that commits at once
(a read through it runs again on a resume, so code that depends on it still sees rows).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from broker.errors import PRECONDITION_FAILED, ReplyError
from worker.sql_file import SHOWN_CHARS
from worker.stores.interface import Partial

# Blank lines, and comments that run nothing, before a statement's first line of code;
# `/*!` and `/*M!` comments are MySQL's executable ones, code.
LEADING_NOISE = re.compile(r"(?:\s+|(?:--|#)[^\n]*(?:\n|\Z)|/\*(?![!]|M!).*?\*/)*", re.DOTALL)


def checksum_of(statement: str) -> str:
    """A statement's checksum, of its text as written but for the whitespace around it."""
    return hashlib.sha256(statement.strip().encode()).hexdigest()


def first_line(statement: str) -> str:
    """How texts name a statement: its first line of code, cut at SHOWN_CHARS."""
    code = statement[LEADING_NOISE.match(statement).end():]
    line = code.split("\n", 1)[0].strip()
    return line if len(line) <= SHOWN_CHARS else line[: SHOWN_CHARS - 3] + "..."


def span(done: int) -> str:
    """`statement 1`, `statements 1..4`."""
    return "statement 1" if done == 1 else f"statements 1..{done}"


class ChangedStatements(ReplyError):
    """Error 22: statements of a partial step are no longer the file's, so it cannot be
    resumed; nothing ran."""


class StatementSteps:
    """The statements of one step (the up or down of one migration) as they run: their
    numbers, their checksums, the ones a resume skips, and what stays after each."""

    def __init__(
        self, version: int, name: str, action: str, request_id: bytes | None,
        resume: Partial | None = None, undoing: Partial | None = None,
    ) -> None:
        """`resume`: the Partial of the same action this step goes on from; `undoing`: an
        apply's Partial whose statements this step undoes one by one, newest first (the
        down statements that match them), so that what stays is said in up statements."""
        self.version = version
        self.name = name
        self.action = action  # "apply" (up) or "rollback" (down)
        self.request_id = request_id
        self.resume = resume
        self.undoing = undoing
        self.skip = resume.done if resume is not None else 0
        self.checksums: list[str] = list(resume.checksums) if resume is not None else []
        self.count = 0  # statements numbered so far
        self.committed = self.skip  # statements that are in effect for sure
        self.saved = resume is not None  # a Partial of this step is in the database
        self.current: tuple[int, str] | None = None  # the statement running: number, line
        self.failed: tuple[int, str] | None = None  # the statement that failed, if one did

    def next(self, sql: str) -> tuple[int, bool]:
        """Number the next statement; whether to run it (a resume skips those done).
        Raises ChangedStatements when a skipped one differs from the one that ran."""
        self.count += 1
        number = self.count
        checksum = checksum_of(sql)
        if number <= self.skip:
            if checksum != self.checksums[number - 1]:
                raise self._changed(f"statement {number} is not the one that ran then (now:"
                                    f" {first_line(sql)!r})")
            return number, False
        if number > len(self.checksums):
            self.checksums.append(checksum)
        else:
            self.checksums[number - 1] = checksum
        self.current = (number, first_line(sql))
        return number, True

    def finish(self) -> None:
        """The step's code returned: raises ChangedStatements if it sent fewer statements
        than a resume found done."""
        if self.count < self.skip:
            raise self._changed(f"it now has {self.count} statements")

    def partial(self, done: int, running: int | None = None) -> Partial:
        """The Partial to save: statements 1..done of this step in effect, `running` under
        way (while undoing, said as the up statements that stay, and the one being undone)."""
        line = self.current[1] if self.current is not None and running is not None else None
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        if self.undoing is not None:
            kept = self.undoing.done - done
            return Partial(self.version, self.name, "apply", kept,
                           self.undoing.checksums[:kept],
                           None if running is None else self.undoing.done - running + 1,
                           line, self.request_id, now)
        return Partial(self.version, self.name, self.action, done,
                       tuple(self.checksums[:done]), running, line, self.request_id, now)

    def stays(self) -> Partial | None:
        """What stays of the step now that it stopped: None when nothing does."""
        partial = self.partial(self.committed)
        return partial if partial.done else None

    def _changed(self, what: str) -> ChangedStatements:
        part = "up" if self.action == "apply" else "down"
        return ChangedStatements(
            PRECONDITION_FAILED,
            f"migration {self.version} {self.name} stopped partway with {span(self.skip)} of"
            f" its {part} section in effect, and {what}, so nothing ran: put {span(self.skip)}"
            f" back as they ran to go on at statement {self.skip + 1}, or repair the database"
            " by hand and send resolve",
            partial=partial_field(self.resume) if self.resume is not None else None,
        )


def partial_field(partial: Partial) -> dict[str, object]:
    """A Partial as replies show it (status entries, errors)."""
    field: dict[str, object] = {"action": partial.action, "statements_done": partial.done}
    if partial.running is not None:
        field["uncertain"] = {"statement": partial.running, "line": partial.running_line}
    return field
