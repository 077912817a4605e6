"""What a PostgreSQL dry run reports of its locks: for each migration, each existing relation
its statements locked, the strongest mode, and whether it was rewritten.

    dry run's transaction
      begin(3)     snapshot: oid, name, relfilenode, size of every relation there is
      statement -> observe(): pg_locks of our backend, relfilenodes  -> entries of version 3
      statement -> observe()
      begin(4)     snapshot again (sizes and relfilenodes as version 4 finds them)
      ...
    report()       [{"version", "relation", "mode", "rewritten", "bytes"}, ...] first seen first

Only what the dry run did not create is listed: a relation is "existing" when it was there
before the dry run's first migration began (the tracking tables and their indexes aside).
The dry run is one transaction, so a lock stays held until it ends: a later migration that
takes a mode no stronger than one already reported for a relation, and does not rewrite
it, cannot be told apart from the earlier one, and gets no entry of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from worker.stores.interface import LockWatch

# PostgreSQL's table-level lock modes as pg_locks names them, weakest first, in the order
# its documentation lists them and lockdefs.h numbers them. Anything else (SIReadLock, a
# serializable transaction's predicate lock) blocks nobody and is not reported.
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
STRENGTH = {mode: rank for rank, mode in enumerate(LOCK_MODES)}
INDEX_KINDS = frozenset({"i", "I"})  # pg_class.relkind of an index, a partitioned index

# The relations of the user's schemas, but the tracking tables and their indexes, with
# their size. A relation another session holds (or waits for) in ACCESS EXCLUSIVE mode is
# not sized, since pg_relation_size would wait for it: its bytes are NULL. `only` (NULL
# for the first snapshot of a dry run) keeps the relations that existed then.
SNAPSHOT = """
WITH tracking AS (
    SELECT c.oid FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s)
), ours AS (
    SELECT oid FROM tracking
    UNION ALL SELECT indexrelid FROM pg_catalog.pg_index
    WHERE indrelid IN (SELECT oid FROM tracking)
), held AS MATERIALIZED (
    SELECT relation FROM pg_catalog.pg_locks
    WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock'
    AND pid <> pg_catalog.pg_backend_pid()
    AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
)
SELECT c.oid, format('%%I.%%I', n.nspname, c.relname), c.relkind, c.relfilenode,
    CASE WHEN c.oid NOT IN (SELECT relation FROM held WHERE relation IS NOT NULL)
    THEN pg_catalog.pg_relation_size(c.oid) END
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
AND c.oid NOT IN (SELECT oid FROM ours)
AND (%(only)s::oid[] IS NULL OR c.oid = ANY(%(only)s::oid[]))
"""
# Every relation lock our backend holds now, with the relation's relfilenode (NULL once it
# was dropped in this transaction).
HELD = """
SELECT l.relation, l.mode, c.relfilenode
FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
WHERE l.locktype = 'relation' AND l.granted AND l.pid = pg_catalog.pg_backend_pid()
"""
KIND_NAMED = "SELECT relkind FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass(%s)"

Run = Callable[[str, Any], Iterable[Sequence[Any]]]  # a query on the dry run's session: rows


class Relation(NamedTuple):
    """One relation as a migration found it before its first statement."""

    oid: int
    name: str  # schema-qualified, quoted where it must be: public.accounts
    kind: str  # pg_class.relkind
    filenode: int  # pg_class.relfilenode: changes when the relation is rewritten
    size: int | None  # pg_relation_size, None when another session held it


def strongest(modes: Iterable[str]) -> str | None:
    """The strongest of `modes` in PostgreSQL's order (see LOCK_MODES), None if none is one."""
    known = [mode for mode in modes if mode in STRENGTH]
    return max(known, key=STRENGTH.__getitem__, default=None)


class PgLockWatch(LockWatch):
    """The locks and rewrites of each migration of one dry run, on PostgreSQL.

    `run` executes a query on the dry run's own session, inside its transaction (pg_locks
    shows a backend's own locks, and the snapshot must see what earlier migrations of the
    dry run did). Costs one query per migration (the snapshot, which sizes every existing
    relation) and one per statement (pg_locks), and a third when an index disappears.
    """

    def __init__(self, run: Run, schema: str, tracking_tables: Sequence[str]) -> None:
        self._run = run
        self._tracking = {"schema": schema, "tables": list(tracking_tables)}
        self._existing: list[int] | None = None  # oids there before the dry run's first step
        self._before: dict[int, Relation] = {}  # this migration's snapshot, by oid
        self._step: dict[str, Any] = {}  # how entries name the migration that runs now
        self._entries: list[dict[str, Any]] = []  # the report, in the order first seen
        self._mine: dict[int, dict[str, Any]] = {}  # this migration's entries, by oid
        self._reported: dict[int, int] = {}  # per oid, the strongest mode reported so far
        self._rebuilt: dict[int, bool] = {}  # gone indexes: made again under the same name?

    def begin(self, version: int | None, name: str = "") -> None:
        """Migration `version` is about to run its first statement: snapshot the relations
        (those that existed before the dry run began), as it finds them. A repeatable
        migration (version None) is named in its entries by `name` after a null version."""
        rows = self._run(SNAPSHOT, {**self._tracking, "only": self._existing})
        self._before = {row[0]: Relation(*row) for row in rows}
        if self._existing is None:
            self._existing = list(self._before)
        self._step = {"version": version} if version is not None else {
            "version": None, "name": name}
        self._mine = {}
        self._rebuilt = {}

    def observe(self) -> None:
        """After a statement of the running migration: note each existing relation our
        backend holds a lock on, at its strongest mode, and each rewritten one."""
        modes: dict[int, list[str]] = {}
        filenodes: dict[int, int | None] = {}
        for oid, mode, filenode in self._run(HELD, None):
            if oid in self._before:
                modes.setdefault(oid, []).append(mode)
                filenodes[oid] = filenode
        # Relations first seen after the same statement are listed by name.
        for oid in sorted(modes, key=lambda oid: self._before[oid].name):
            mode = strongest(modes[oid])
            if mode is not None:
                self._note(self._before[oid], mode, self._rewritten(oid, filenodes[oid]))

    def report(self) -> list[dict[str, Any]]:
        """Every entry so far, first seen first: one per migration and relation that it
        locked more strongly than any migration before it, or rewrote."""
        return [dict(entry) for entry in self._entries]

    def _note(self, relation: Relation, mode: str, rewritten: bool) -> None:
        rank = STRENGTH[mode]
        entry = self._mine.get(relation.oid)
        if entry is None:
            if rank <= self._reported.get(relation.oid, -1) and not rewritten:
                return  # held since an earlier migration took it (see the module's note)
            entry = {**self._step, "relation": relation.name, "mode": mode,
                     "rewritten": rewritten, "bytes": relation.size}
            self._mine[relation.oid] = entry
            self._entries.append(entry)
        elif rank > STRENGTH[entry["mode"]]:
            entry["mode"] = mode
        entry["rewritten"] = entry["rewritten"] or rewritten
        self._reported[relation.oid] = max(rank, self._reported.get(relation.oid, -1))

    def _rewritten(self, oid: int, filenode: int | None) -> bool:
        """The relation's storage was replaced since the migration began: a new
        relfilenode, or (an index that is gone) another index made under its name, as
        ALTER COLUMN ... TYPE rebuilds the indexes on a column."""
        before = self._before[oid]
        if filenode is not None:
            return filenode != before.filenode
        if before.kind not in INDEX_KINDS:
            return False  # dropped
        if oid not in self._rebuilt:
            rows = list(self._run(KIND_NAMED, (before.name,)))
            self._rebuilt[oid] = bool(rows) and rows[0][0] in INDEX_KINDS
        return self._rebuilt[oid]
