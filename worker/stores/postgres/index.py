"""CREATE INDEX CONCURRENTLY that an earlier build of the same index cannot poison.

A concurrent index build that fails, is cancelled or whose session is killed leaves its
index behind, marked INVALID (pg_index.indisvalid false): never used by queries, but still
updated by every write, and in the way of the next build of that name. `CREATE INDEX
CONCURRENTLY name` then fails with "already exists", and `... IF NOT EXISTS name` quietly
keeps the INVALID one, reporting success. So before migration code outside a transaction
runs such a statement, an INVALID index of the name it builds, on the table it indexes, is
dropped (concurrently, so writes to the table go on), and the statement builds it anew.

    statement text --leading_tokens--> index_builds() --> IndexBuild(name, table)
                                                             |
    drop_invalid_index(connection, build): pg_index says INVALID? DROP INDEX CONCURRENTLY
                                                             --> Repair (for the history)

Only the statement's leading tokens are read (pg_sql's tokenizer: comments, quoted names
and strings as PostgreSQL reads them), never the rest of its grammar. An index is always
created in its table's schema, so the table's name, resolved through the session's
search_path when it is not qualified, says where the index is. An index that another
session is building at this moment is INVALID too: the DROP then waits for that build's
lock on the table (as long as lock_timeout lets it) and drops what it finds afterwards,
which the migration builds again as it says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from worker.stores.interface import Repair
from worker.stores.postgres.sql import OTHER, QUOTED_NAME, WORD, Token, leading_tokens

log = logging.getLogger(__name__)

DROP_INVALID_INDEX = "drop_invalid_index"  # the history's action for the repair
# CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS name ON ONLY schema . table: 12 tokens.
LEADING_TOKENS = 12
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL cuts longer names (NAMEDATALEN - 1)
FOLD_CASE = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
INVALID_INDEX = (
    "SELECT n.nspname, i.relname FROM pg_catalog.pg_index x"
    " JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace"
    " WHERE x.indrelid = to_regclass(%s) AND i.relname = %s AND NOT x.indisvalid"
)


class IndexBuild(NamedTuple):
    """The index a CREATE INDEX CONCURRENTLY statement builds: names as PostgreSQL
    stores them (unquoted ones folded to lower case, long ones cut)."""

    name: str
    table: tuple[str, ...]  # (table,) or (schema, table), as the statement wrote it

    def table_text(self) -> str:
        """The table's name quoted, as to_regclass() reads it: "app"."users"."""
        return ".".join('"' + part.replace('"', '""') + '"' for part in self.table)


def index_builds(text: str) -> list[IndexBuild]:
    """The named indexes that the statements of `text` build concurrently, in order."""
    found = []
    for tokens in leading_tokens(text, LEADING_TOKENS):
        build = concurrent_index(tokens)
        if build is not None:
            found.append(build)
    return found


def concurrent_index(tokens: Sequence[Token]) -> IndexBuild | None:
    """The index of a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON [ONLY]
    [schema.]table ...` statement, given its leading tokens; None for any other statement,
    or one that leaves the name to PostgreSQL (nothing of that name can be in its way)."""
    words = [_keyword(token) for token in tokens]
    position = 1
    if words[:1] != ["CREATE"]:
        return None
    if words[position : position + 1] == ["UNIQUE"]:
        position += 1
    if words[position : position + 2] != ["INDEX", "CONCURRENTLY"]:
        return None
    position += 2
    # `if` alone is a name PostgreSQL allows: only IF NOT EXISTS is the clause.
    if words[position : position + 3] == ["IF", "NOT", "EXISTS"]:
        position += 3
    name = _name(tokens, position)
    if name is None or words[position] == "ON":
        return None
    position += 1
    if words[position : position + 1] != ["ON"]:
        return None
    position += 1
    if words[position : position + 1] == ["ONLY"]:
        position += 1
    table = [_name(tokens, position)]
    if _is(tokens, position + 1, OTHER, "."):
        table.append(_name(tokens, position + 2))
        if _is(tokens, position + 3, OTHER, "."):
            return None  # database.schema.table: PostgreSQL refuses it
    if None in table:
        return None
    return IndexBuild(name, tuple(table))  # type: ignore[arg-type]


def drop_invalid_index(connection: Any, build: IndexBuild) -> Repair | None:
    """Drop, with DROP INDEX CONCURRENTLY, an INVALID index named as `build`'s on its
    table, if there is one; returns what was done, None if nothing was (no such index, a
    valid one, or no such table yet). Call outside a transaction, which both statements
    need. Raises the psycopg error of a statement that fails (a lock wait past
    lock_timeout, a cancel)."""
    # Here, not at the top: postgres_store imports this module before it has checked that
    # psycopg can be imported at all (a worker without it must say how to install it).
    from psycopg import sql

    row = connection.execute(
        INVALID_INDEX, (build.table_text(), build.name), prepare=False).fetchone()
    if row is None:
        return None
    schema, name = row
    started = time.perf_counter()
    connection.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name)),
        prepare=False)
    duration_ms = (time.perf_counter() - started) * 1000
    target = f"{schema}.{name}"
    log.warning("dropped the INVALID index %s on %s, left by a concurrent build that did not"
                " finish, so that the migration builds it again", target, build.table_text())
    return Repair(DROP_INVALID_INDEX, target, duration_ms)


def _keyword(token: Token) -> str | None:
    return token.text.upper() if token.kind == WORD else None


def _is(tokens: Sequence[Token], position: int, kind: str, text: str) -> bool:
    return position < len(tokens) and tokens[position] == Token(kind, text)


def _name(tokens: Sequence[Token], position: int) -> str | None:
    """The name at `position` as PostgreSQL stores it, or None if there is none."""
    if position >= len(tokens):
        return None
    token = tokens[position]
    if token.kind == WORD and not token.text[0].isdigit() and token.text[0] != "$":
        name = token.text.translate(FOLD_CASE)  # PostgreSQL folds ASCII letters only
    elif token.kind == QUOTED_NAME and token.text:
        name = token.text
    else:
        return None
    encoded = name.encode()
    if len(encoded) > MAX_IDENTIFIER_BYTES:
        name = encoded[:MAX_IDENTIFIER_BYTES].decode(errors="ignore")
    return name
