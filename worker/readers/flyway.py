"""Flyway's versioned migrations, `V{version}__{description}.sql` and its optional undo
`U{version}__{description}.sql`, read into one SqlFile.

    V3__add_email.sql     plain SQL                        -> SqlFile.up, up_span
    U3__add_email.sql     plain SQL; empty or comments     -> SqlFile.down ([] for a no-op),
                          only: reverts nothing               down_span (in this file)
                          no such file                     -> SqlFile.down None: it cannot be
                                                              reverted

As Flyway does, a file whose statements all must run outside a transaction
(CREATE INDEX CONCURRENTLY, see plain_sql) runs outside one; any other runs in one. Flyway
replaces `${name}` placeholders in a file before running it; nothing here knows their values,
so a file holding one is refused rather than run with the placeholder in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from worker.readers import markers, plain_sql
from worker.sql_file import SqlFile, SqlFileError, shown

PLACEHOLDER = re.compile(r"\$\{[^}\n]*\}")


def read(
    up: tuple[str, str],
    undo: tuple[str, str] | None,
    split_statements: Callable[[str], Iterator[str]],
) -> SqlFile:
    """The migration of a V file and its U file, each given as (filename, text), cut into
    statements by `split_statements`; `undo` None: there is no U file.

    Raises SqlFileError naming the file and line for a file holding another format's
    marker or a placeholder, or ending inside a statement.
    """
    up_statements, up_transaction = _read_file(*up, "up", split_statements)
    if undo is None:
        return SqlFile(up_statements, None, True, up_transaction, True,
                       up_span=(0, len(up[1])))
    down_statements, down_transaction = _read_file(*undo, "undo", split_statements)
    return SqlFile(up_statements, down_statements, True, up_transaction, down_transaction,
                   up_span=(0, len(up[1])), down_span=(0, len(undo[1])))


def _read_file(
    filename: str, text: str, section: str, split_statements: Callable[[str], Iterator[str]]
) -> tuple[list[str], bool]:
    """One file's statements, and whether they run in a transaction."""
    markers.refuse_markers(text, filename, "Flyway")
    placeholder = PLACEHOLDER.search(text)
    if placeholder is not None:
        line = text.count("\n", 0, placeholder.start()) + 1
        raise SqlFileError(
            f"{filename} line {line}: {shown(placeholder.group())} is a Flyway placeholder,"
            " and placeholders are not replaced here: write its value into the file"
        )
    statements = plain_sql.statements(text, filename, section, split_statements)
    return statements, plain_sql.runs_in_transaction(statements)
