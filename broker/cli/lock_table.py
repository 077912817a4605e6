"""The table a PostgreSQL dry run's `locks` are printed as: a row per migration and relation,
with `!` marking ACCESS EXCLUSIVE and rewrites, the two that stop the relation's readers.

    !  version  relation         mode              rewritten  size
       3        public.accounts  SHARE             no         1206 kB
    !  4        public.accounts  ACCESS EXCLUSIVE  yes        1206 kB
    ! ACCESS EXCLUSIVE: reads and writes of the relation wait until the migration commits, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.cli.terminal import Style, table

MARK = "!"
HEADERS = (MARK, "version", "relation", "mode", "rewritten", "size")
# pg_locks' names, as LOCK TABLE ... IN <mode> MODE and PostgreSQL's documentation say them.
MODE_NAMES = {
    "AccessShareLock": "ACCESS SHARE",
    "RowShareLock": "ROW SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
}
BLOCKS_READS = "AccessExclusiveLock"
# Sizes as pg_size_pretty writes them: a unit serves up to 10239 of itself.
SIZE_UNITS = ("bytes", "kB", "MB", "GB", "TB", "PB")
SIZE_LIMIT = 10 * 1024
LEGEND = (f"{MARK} ACCESS EXCLUSIVE: reads and writes of the relation wait until the migration"
          " commits; a rewrite copies all of it (its size) meanwhile")


def lock_table(locks: Sequence[dict[str, Any]], style: Style) -> str:
    """The lines a person reads for a dry run's `locks`: the table and, when a row is
    marked, what the mark means; one sentence when the list is empty."""
    if not locks:
        return "no existing relation was locked"
    rows = []
    for entry in locks:
        exclusive = entry["mode"] == BLOCKS_READS
        marked = exclusive or entry["rewritten"]
        rows.append((
            (MARK, "red") if marked else "",
            # A repeatable migration has no version: R and its name (Flyway's R__name).
            str(entry["version"]) if entry["version"] is not None else f"R {entry['name']}",
            entry["relation"],
            (mode_name(entry["mode"]), "red") if exclusive else mode_name(entry["mode"]),
            ("yes", "red") if entry["rewritten"] else "no",
            size_text(entry["bytes"]),
        ))
    lines = [table(HEADERS, rows, style)]
    if any(row[0] for row in rows):
        lines.append(LEGEND)
    return "\n".join(lines)


def size_text(size: int | None) -> str:
    """`8192 bytes`, `1206 kB`, `12 MB`, as pg_size_pretty; `unknown` for None (another
    session held the relation when the dry run would have measured it)."""
    if size is None:
        return "unknown"
    for unit in SIZE_UNITS[:-1]:
        if size < SIZE_LIMIT:
            return f"{size} {unit}"
        size = (size + 512) // 1024  # rounded half up, as pg_size_pretty
    return f"{size} {SIZE_UNITS[-1]}"


def mode_name(mode: str) -> str:
    """`ACCESS EXCLUSIVE` for pg_locks' AccessExclusiveLock; a mode it does not know as is."""
    return MODE_NAMES.get(mode, mode)
