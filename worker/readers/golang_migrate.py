"""golang-migrate's migrations, `NNNN_title.up.sql` and its optional `NNNN_title.down.sql`,
read into one SqlFile.

    1_create_users.up.sql      plain SQL                      -> SqlFile.up, up_span
    1_create_users.down.sql    plain SQL; empty or comments   -> SqlFile.down ([] for a no-op),
                               only: reverts nothing             down_span (in this file)
                               no such file                   -> SqlFile.down None: it cannot
                                                                 be reverted

Each file runs in a transaction, as PostgreSQL runs the one round trip golang-migrate sends,
unless all its statements must run outside one (see plain_sql). A file wrapped in its own
`BEGIN;` ... `COMMIT;`, as golang-migrate's users write them to make a file atomic, runs
inside the migration's transaction without those two statements, which would end it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from worker.readers import markers, plain_sql
from worker.sql_file import SqlFile

BEGINS = (["BEGIN"], ["BEGIN", "WORK"], ["BEGIN", "TRANSACTION"], ["START", "TRANSACTION"])
COMMITS = (["COMMIT"], ["COMMIT", "WORK"], ["COMMIT", "TRANSACTION"], ["END"],
           ["END", "WORK"], ["END", "TRANSACTION"])


def read(
    up: tuple[str, str],
    down: tuple[str, str] | None,
    split_statements: Callable[[str], Iterator[str]],
) -> SqlFile:
    """The migration of an up file and its down file, each given as (filename, text), cut
    into statements by `split_statements`; `down` None: there is no down file.

    Raises SqlFileError naming the file and line for a file holding another format's
    marker or ending inside a statement.
    """
    up_statements, up_transaction = _read_file(*up, "up", split_statements)
    if down is None:
        return SqlFile(up_statements, None, True, up_transaction, True,
                       up_span=(0, len(up[1])))
    down_statements, down_transaction = _read_file(*down, "down", split_statements)
    return SqlFile(up_statements, down_statements, True, up_transaction, down_transaction,
                   up_span=(0, len(up[1])), down_span=(0, len(down[1])))


def _read_file(
    filename: str, text: str, section: str, split_statements: Callable[[str], Iterator[str]]
) -> tuple[list[str], bool]:
    """One file's statements, its own BEGIN/COMMIT wrapper left out, and whether they run
    in a transaction."""
    markers.refuse_markers(text, filename, "golang-migrate")
    statements = plain_sql.statements(text, filename, section, split_statements)
    if (len(statements) >= 2 and plain_sql.leading_words(statements[0]) in BEGINS
            and plain_sql.leading_words(statements[-1]) in COMMITS):
        statements = statements[1:-1]
    return statements, plain_sql.runs_in_transaction(statements)
