"""The store interface: what the engine and the worker ask of a database, and opening one.

A store owns its connection, its transactions, the tracking rows, the history, the stored
replies, a change stamp and the owner lock. The engine never touches a connection: it asks
the store for a transaction and for the `db` that migration code gets. Each backend has its
package beside this module (sqlite/, postgres/, mariadb/), and worker/stores/opening.py is
the one place that turns `--db` into one of them; this module imports none.

Given no --table, a store finds its tracking table by looking in the database (see
choose_table): `schema_migrations`, or `migrations_node` where another tool's table has
that name (golang-migrate's and dbmate's do), so that the two never meet.
"""

from __future__ import annotations

import logging
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

from broker.endpoint import ALTERNATE_TABLE, DEFAULT_TABLE
from broker.errors import CRASH, PRECONDITION_FAILED, TEMPORARILY_UNAVAILABLE, ReplyError
from worker.lock import AlreadyOwned

__all__ = ["ALTERNATE_TABLE", "DEFAULT_TABLE", "REPEATABLE_VERSION", "AlreadyOwned",
           "AppliedMigration", "AppliedRepeatable", "CrashHook", "Event", "ForeignKeyViolation",
           "ForeignTable", "HistoryMark", "LockTimeout", "LockWatch", "MomentaryRefusal",
           "NotAdopted", "Partial", "Repair", "ReplyEvicted", "Store", "TableChoice",
           "TrackingChanges", "TrackingTableMissing", "choose_table", "tracking_facts"]

log = logging.getLogger(__name__)

KEEP_REPLIES = 10_000  # stored replies kept for resent requests; older ones are pruned
# A request id as broker/client.py makes it: 8 bytes naming the node (random, one per node
# process), then an 8-byte counter. A node resends only its newest write, so a pruned
# reply needs remembering only while it is its node's newest (see Store.store_reply).
REQUEST_ID_BYTES = 16
NODE_ID_BYTES = 8
CRASH_AFTER_COMMIT_ENV = "MIGRATIONS_TEST_CRASH_AFTER_COMMIT"  # test hook, see CrashHook
# The history's version for a repeatable migration's steps, whose column cannot hold NULL in
# databases made before repeatables: no migration has version 0 (the catalog refuses it, and
# `rollback to 0` means none), so it can name nothing else. Replies say null.
REPEATABLE_VERSION = 0
# Columns every tracking table of ours has (see each store's SCHEMA): a table of our name
# without them is another program's.
OUR_COLUMNS = frozenset({"version", "name", "checksum", "applied_seq"})


class AppliedMigration(NamedTuple):
    version: int
    name: str
    checksum: str
    applied_seq: int  # order of application: rollback reverts the highest
    request_id: bytes | None  # the request that applied it, so a resent request can tell


class AppliedRepeatable(NamedTuple):
    """A repeatable migration as it was last applied."""

    name: str
    checksum: str  # of the file as it was then: another one is applied again
    applied_at: str  # ISO 8601, UTC
    request_id: bytes | None  # the request that applied it, so a resent request can tell


class Partial(NamedTuple):
    """A migration step that stopped partway on a database whose DDL commits at once
    (MariaDB, MySQL): the statements of it that stay in effect, said exactly.

    `action` "apply": statements 1..done of its up section are in effect, and it is not
    recorded as applied; "rollback": statements 1..done of its down section ran, and it
    is still recorded as applied. `checksums` are those statements' (steps.checksum_of),
    so that a resume can tell whether they are still the file's. `running` is the
    statement that was running when its worker died (it may or may not have taken
    effect), with its first line; None when the worker saw how it ended.
    """

    version: int
    name: str
    action: str
    done: int
    checksums: tuple[str, ...]
    running: int | None
    running_line: str | None
    request_id: bytes | None
    updated_at: str  # ISO 8601, UTC


class Event(NamedTuple):
    """One apply, rollback, baseline, repeatable, lock timeout or repair in the history, as
    recorded in its transaction."""

    version: int  # REPEATABLE_VERSION for a repeatable migration's steps
    name: str
    action: str  # "apply", "rollback", "baseline", "adopt", "repeatable" (a repeatable
    # migration applied), "lock_timeout" (a try that gave up), or a Repair's action
    checksum: str
    started_at: str  # ISO 8601, UTC
    duration_ms: float
    src: str | None  # who sent the request
    request_id: bytes | None


class HistoryMark(NamedTuple):
    """The history's newest event as a status saw it: its seq, and enough of its row to tell
    it from another event given the same seq later (a history deleted and begun again)."""

    seq: int  # 0: the history had no event
    version: int
    action: str
    started_at: str


NO_EVENT = HistoryMark(0, 0, "", "")
VERSION_SUM_MASK = 0xFFFF_FFFF  # of each tracking row's version, summed in TrackingChanges


class TrackingChanges(NamedTuple):
    """What the tracking rows are now, for the versions the history's events since a
    HistoryMark name, read in one snapshot with the count and sum of every row."""

    mark: HistoryMark  # the newest event now
    recorded: dict[int, str | None]  # each version named since: its recorded name, or None
    count: int  # tracking rows
    version_sum: int  # the sum of their versions' low 32 bits (VERSION_SUM_MASK)


class LockTimeout(ReplyError):
    """Error 11 for a statement of migration code that gave up waiting for a lock: its step
    was rolled back, and is worth another try once the holder is gone.

    `wait` is what it waited for and who held it, when the store saw it (a wait shorter
    than a look of the watch is not seen); `nothing_stayed` is False when statements of a
    migration outside a transaction ran before it (a retry would run them again).
    """

    def __init__(self, text: str, wait: Any = None, nothing_stayed: bool = True) -> None:
        super().__init__(TEMPORARILY_UNAVAILABLE, text)
        self.wait = wait
        self.nothing_stayed = nothing_stayed


class Repair(NamedTuple):
    """Something a store did to the database of its own accord while a migration ran, so
    that the migration could do its work (PostgreSQL: an INVALID index dropped before a
    concurrent build of the same name); the history records it with the step."""

    action: str  # the history's action for it: "drop_invalid_index"
    target: str  # what it was done to: "public.idx_users_email"
    duration_ms: float


class TrackingTables(NamedTuple):
    """The names of one tracking table and its companions, in the order they are created."""

    migrations: str  # one row per applied migration
    replies: str  # stored replies to writes, for resent requests
    history: str  # every apply, rollback and baseline
    evicted: str  # per node, the newest request whose stored reply was pruned
    repeats: str  # per repeatable migration, the checksum it was last applied with
    schemas: str  # per history event, the schema's fingerprint and what it changed


def tracking_tables(table: str = DEFAULT_TABLE) -> TrackingTables:
    """The tables `--table` names, on every backend: the default keeps the names databases
    created before the option have (schema_migration_replies, schema_migration_history,
    and schema_migration_evicted, _repeats and _schemas beside them); another name T gives
    T, T_replies, T_history, T_evicted, T_repeats and T_schemas. Each suffix is 8 bytes,
    so a name that fit PostgreSQL's 63 bytes with the first companions still fits.

    Raises ValueError for an empty name or one holding NUL.
    """
    if not table or "\x00" in table:
        raise ValueError(f"the tracking table name {table!r} must be non-empty, without NUL")
    if table == DEFAULT_TABLE:
        return TrackingTables(table, "schema_migration_replies", "schema_migration_history",
                              "schema_migration_evicted", "schema_migration_repeats",
                              "schema_migration_schemas")
    return TrackingTables(table, f"{table}_replies", f"{table}_history", f"{table}_evicted",
                          f"{table}_repeats", f"{table}_schemas")


class MomentaryRefusal(ReplyError):
    """An error that tells how the database is at this moment, not what a request did:
    never stored for resends (see Engine._once), which ask again."""


class TableChoice(NamedTuple):
    """The tracking table a store uses, and why."""

    table: str
    # The default name, when it holds another program's table and `table` stepped aside
    # from it (ALTERNATE_TABLE); None otherwise.
    displaced: str | None = None


def is_ours(columns: list[str]) -> bool:
    """Whether a table with these columns is a tracking table of ours."""
    return {column.lower() for column in columns} >= OUR_COLUMNS


def choose_table(columns_of: Callable[[str], list[str] | None]) -> TableChoice:
    """The tracking table of a store given no --table, found by looking in the database
    (`columns_of(name)`: a table's columns, None when there is none):

    - ALTERNATE_TABLE once it exists (adopt made it: the default name is, or was until
      the team dropped it, another tool's);
    - ALTERNATE_TABLE while DEFAULT_TABLE holds another program's table (adopt will make
      it; until then reads and writes are refused, see NotAdopted), never that table;
    - DEFAULT_TABLE otherwise.
    """
    default = columns_of(DEFAULT_TABLE)
    foreign = default is not None and not is_ours(default)
    if foreign or columns_of(ALTERNATE_TABLE) is not None:
        return TableChoice(ALTERNATE_TABLE, DEFAULT_TABLE if foreign else None)
    return TableChoice(DEFAULT_TABLE)


class ForeignTable(MomentaryRefusal):
    """Error 22: the table a store tracks in, by its name, is another program's (given by
    --table, or made by another tool after the worker started). Nothing reads or writes it;
    not stored for resends."""

    def __init__(self, table: str, columns: list[str] | None) -> None:
        from worker.adopt.tools import described, recognize  # only this error needs them

        bare = table.rpartition(".")[2]
        tool = None if columns is None else recognize(bare, columns)
        what = ("another program's table" if columns is None
                else described(bare, columns))
        if bare == DEFAULT_TABLE:
            adopt = "" if tool is None else f", then `migrations-node adopt --from {tool.NAME}`"
            advice = (f"with no --table this tool tracks in {ALTERNATE_TABLE} beside it (stop"
                      f" a worker started before that table existed: `migrations-node stop`)"
                      f"{adopt}; or give --table another name")
        else:
            advice = "give --table another name"
        super().__init__(
            PRECONDITION_FAILED,
            f"the tracking table {table} is {what}, not this tool's, so nothing ran and it"
            f" was left as it is: {advice}",
        )


class NotAdopted(MomentaryRefusal):
    """Error 22: the default name holds another tool's table, and our own (ALTERNATE_TABLE)
    does not exist yet: which migrations are applied is that tool's to say, so reads and
    writes are refused until adopt (or baseline) records it. Not stored for resends."""

    def __init__(self, displaced: str, ours: str, columns: list[str]) -> None:
        from worker.adopt.tools import described, recognize  # only this error needs them

        tool = recognize(displaced.rpartition(".")[2], columns)
        if tool is None:
            advice = ("record what it applied with `migrations-node adopt --from TOOL`, or"
                      " `baseline --to V` with the newest version the schema has")
        else:
            advice = (f"run `migrations-node adopt --from {tool.NAME}` to record what"
                      f" {tool.NAME} applied (or `baseline --to V` with the newest version"
                      " the schema has)")
        super().__init__(
            PRECONDITION_FAILED,
            f"{displaced} is {described(displaced.rpartition('.')[2], columns)}, and this"
            f" tool's tracking table {ours} holds nothing yet, so nothing ran: {advice};"
            f" {displaced} is never written",
        )


def node_of(request_id: bytes) -> bytes:
    """The node part of a request id (see REQUEST_ID_BYTES); an id of another length, which
    broker/client.py never makes, is its own node."""
    if len(request_id) == REQUEST_ID_BYTES:
        return request_id[:NODE_ID_BYTES]
    return request_id


class ReplyEvicted(ReplyError):
    """Error 13 for a resent write whose stored reply was pruned: it ran, and is not run again."""

    def __init__(self, request_id: bytes) -> None:
        super().__init__(
            CRASH,
            f"request {request_id.hex()} was answered before, but its stored reply is gone"
            f" (the last {KEEP_REPLIES:,} are kept), so it was not run again: ask for status"
            " or history to see what it did",
        )


# The history actions that leave a migration recorded as applied; the others (a try that
# gave up waiting for a lock, an INVALID index dropped before a build) record nothing.
RECORDING_ACTIONS = frozenset({"apply", "baseline", "adopt", "resolved_applied"})
# And those that leave it not applied.
UNRECORDING_ACTIONS = frozenset({"rollback", "resolved_not_applied"})


class TrackingTableMissing(MomentaryRefusal):
    """Error 22: the tracking table was dropped by hand while its companions remain.

    Creating it again empty would make every applied migration look pending, and run them
    all a second time; instead every request that needs it is refused, until `baseline`
    (which creates it) records what the database has, or a backup restores it.
    """

    def __init__(self, table: str, present: list[str], events: list[Event]) -> None:
        applied: dict[int, None] = {}  # in the order the history applied them
        for event in events:
            if event.version == REPEATABLE_VERSION:
                continue  # a repeatable migration's: no tracking row ever held it
            if event.action in UNRECORDING_ACTIONS:
                applied.pop(event.version, None)
            elif event.action in RECORDING_ACTIONS:
                applied[event.version] = None
        versions = sorted(applied)
        if versions:
            said = (f"versions {', '.join(map(str, versions))} are" if len(versions) > 1
                    else f"version {versions[0]} is")
            advice = (
                f"the history says {said} applied: send baseline with to:"
                f" {versions[-1]} to record every migration up to it without running any"
                f" (restore {table} from a backup instead if that is not what is applied)"
            )
        else:
            advice = (
                "the history names no applied migration: send baseline with to: the newest"
                " version the schema has, to record those without running any, or restore"
                f" {table} from a backup"
            )
        super().__init__(
            PRECONDITION_FAILED,
            f"the tracking table {table} is missing while {', '.join(present)} remain: it was"
            " dropped by hand, so which migrations are applied is unknown and nothing ran;"
            f" {advice}",
        )


class ForeignKeyViolation(Exception):
    """Rows that reference missing rows, found before a commit with foreign keys off."""

    def __init__(self, tables: list[str]) -> None:
        super().__init__(
            "the foreign key check found rows without their parent in "
            + ", ".join(tables)
        )
        self.tables = tables


class LockWatch:
    """What a dry run learns of the locks its statements take. This one, the default of
    every store, learns nothing, so that a dry run's reply has no `locks` at all;
    worker/stores/postgres/locks.py has PostgreSQL's."""

    def begin(self, version: int | None, name: str = "") -> None:
        """Migration `version` (None: the repeatable migration `name`) is about to run its
        first statement."""

    def report(self) -> list[dict[str, Any]] | None:
        """The reply's `locks`, or None for no such field."""
        return None


NO_LOCK_WATCH = LockWatch()


class Store(ABC):
    """One database as the engine sees it. Every write goes through `transaction()`."""

    commits: int  # transactions this store committed; with data_version(), a change stamp
    # Cuts a .sql section into statements by this database's rules (see sql_file).
    split_statements: Callable[[str], Iterator[str]]
    dialect: str  # "sqlite", "postgresql" or "mysql": which lint rules apply
    # Its DDL commits at once and cannot be rolled back (MariaDB, MySQL): a migration runs
    # statement by statement, and what stays of one that stopped partway is kept as a
    # Partial (see worker/steps.py); the others run each step in one transaction.
    implicit_commits = False
    tables: TrackingTables  # the tracking table's name and its companions'
    # The default name, when it holds another program's table and this store tracks in
    # ALTERNATE_TABLE instead (see choose_table); None otherwise.
    displaced: str | None = None
    _schema: list[str]  # the CREATE statement of each, in the same order
    # What the store repaired outside a transaction during the latest migration_db() and
    # no commit has recorded since (none on SQLite): the engine records each in the
    # history, in the step's transaction or, when the step fails, in one of their own.
    repairs: Sequence[Repair] = ()
    _recorded_schema: Any = None  # the RecordedSchema, once a step or drift needs it

    def _tables_to_create(
        self, existing: set[str], restore_tracking: bool
    ) -> list[tuple[str, str]]:
        """The (name, CREATE statement) of each tracking table missing from `existing`: all
        of them in a new database, the companions when they were dropped by hand.

        Raises TrackingTableMissing when the tracking table itself was dropped and its
        companions remain, unless `restore_tracking` (baseline)."""
        missing = [
            (name, statement)
            for name, statement in zip(self.tables, self._schema, strict=True)
            if name not in existing
        ]
        if not missing:
            return []
        if existing and self.tables.migrations not in existing and not restore_tracking:
            raise self._tracking_missing(existing)
        # Databases made before the evicted, repeats and schemas tables lack them: no news.
        dropped = [name for name, _ in missing
                   if name not in (self.tables.evicted, self.tables.repeats,
                                   self.tables.schemas)]
        if existing and dropped:
            log.warning("creating the tracking tables %s again: they were dropped while %s"
                        " remained", ", ".join(dropped), ", ".join(sorted(existing)))
        return missing

    def _not_adopted(self) -> NotAdopted | None:
        """NotAdopted while the default name this store stepped aside from still holds
        another program's table (ask it only when our tracking tables do not exist)."""
        if self.displaced is None:
            return None
        columns = self.columns_of(self.displaced)
        if columns is None or is_ours(columns):
            return None  # dropped since: nothing stands beside us any more
        return NotAdopted(self.label(self.displaced), self.label(self.tables.migrations),
                          columns)

    def _foreign_table(self) -> ForeignTable:
        """ForeignTable for our tracking table's name, with its columns when they can be
        read (not in a failed PostgreSQL transaction)."""
        try:
            columns = self.columns_of(self.tables.migrations)
        except Exception:
            columns = None
        return ForeignTable(self.label(self.tables.migrations), columns)

    def _tracking_missing(self, existing: set[str]) -> TrackingTableMissing:
        """Error 22 for a tracking table dropped by hand, with what the history says."""
        events = self.history() if self.tables.history in existing else []
        present = [name for name in self.tables if name in existing]
        return TrackingTableMissing(self.tables.migrations, present, events)

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def columns_of(self, table: str) -> list[str] | None:
        """The columns of `table` (beside the tracking tables: the same schema on a
        server), in order; None when there is no such table."""

    @abstractmethod
    def foreign_rows(self, table: str, query: str) -> list[tuple]:
        """The rows of a read of another program's `table` (beside the tracking tables),
        which `query`, one SELECT, names `{table}`. A time the database keeps without its
        zone comes as the database's own zone would read it (see each store)."""

    def label(self, table: str) -> str:
        """How texts name a table beside the tracking tables: itself on SQLite,
        `schema.table` on a server."""
        return table

    @abstractmethod
    def acquire_owner(self, note: bytes, wait: bool = False) -> None:
        """Become the database's only worker, for as long as this process lives; raises
        AlreadyOwned naming the owner, or with `wait` blocks until it goes. `note` says
        who we are (pid, migrations folder) where the backend can keep it."""

    @abstractmethod
    def release_owner(self) -> None: ...

    @abstractmethod
    def transaction(
        self, *, commit: bool = True, foreign_keys: bool = True, restore_tracking: bool = False
    ) -> AbstractContextManager[None]:
        """One write transaction: all of it commits, or none (with `commit` false, a dry
        run: always rolled back). It begins by creating the tracking tables that are
        missing: all of them in a new database, the companions (replies, history, evicted)
        when they were dropped by hand; the tracking table itself only with
        `restore_tracking` (baseline) once its companions exist.

        Raises ReplyError(TEMPORARILY_UNAVAILABLE) while another program holds the database
        (at any step, COMMIT included: the transaction is rolled back); TrackingTableMissing
        when the tracking table was dropped by hand; ForeignKeyViolation when foreign keys
        were off and rows lost their parent."""

    @abstractmethod
    def migration_db(
        self,
        in_transaction: bool = True,
        check: Callable[[], None] | None = None,
        lock_timeout_s: float | None = None,
        steps: Any = None,
    ) -> AbstractContextManager[Any]:
        """The `db` migration code gets (execute, executemany, query, executescript, with
        `?` parameters on every backend); `check` runs before each of its statements (a
        cancel raises there). What the migration changed of its session (settings,
        temporary objects; see each store) is undone after it, failed or not, so that
        every migration starts from the session a newly started worker has. Raises
        RuntimeError afterwards if the migration ended the transaction itself.

        `lock_timeout_s` is how long each of its statements may wait for a lock (0: for
        ever; None: the store's default) where the database has such a setting; a
        statement that waits longer raises LockTimeout. SQLite has none: its busy
        timeout is the whole database's, and stays as it is.

        `steps` (steps.StatementSteps) is given only to a store whose DDL commits at once
        (implicit_commits): it numbers the migration's statements, skips those a resume
        finds done, and is told what stays after each statement that commits."""

    @abstractmethod
    def interrupt(self) -> None:
        """From another thread: stop the statement that migration code runs now, if any
        (sqlite3's interrupt, the server's query cancel); it fails, and its transaction
        is rolled back. The store's own statements are never cut."""

    @abstractmethod
    def reader(self) -> Store:
        """Another connection to the same database, for reads beside a running write; it
        never writes and owns nothing."""

    @abstractmethod
    def facts(self) -> dict[str, Any]:
        """What `health` says of the database beyond its name (SQLite: journal_mode)."""

    def moved(self) -> str | None:
        """Why the database this store has open is no longer the one its name gives (a
        SQLite file deleted or replaced since it was opened), or None while it is."""
        return None

    def ensure_owner(self) -> None:
        """Before a write is planned: own the database now, so that the plan is made from
        what the last owner committed (a server's store waits up to its owner wait for
        another host's worker to go, and raises error 11 naming it). A SQLite worker owns
        its file from its start."""
        return None

    def partials(self) -> list[Partial]:
        """Every migration step that stopped partway, by version (see Partial); never any
        on a database that rolls DDL back."""
        return []

    @abstractmethod
    def schema_reading(self) -> tuple[Any, Any, Any]:
        """How to read the schema this store's migrations manage: the module of
        worker/schema that reads this backend, the connection to give it, and the tables
        it leaves out (_unmanaged(), as that reader names them)."""

    def read_schema(self) -> Any:
        """The schema this store's migrations manage, as worker/schema reads it from the
        catalog (a Schema): every object but the tracking tables (and another tool's
        table the default name holds)."""
        reader, connection, exclude = self.schema_reading()
        return reader.read(connection, exclude)

    @abstractmethod
    def schema_rows(self) -> tuple[int, list[str]]:
        """The schemas table's newest seq (0: no row, or no table), and the changes of
        every row that has any, oldest first."""

    @abstractmethod
    def newest_schema_seq(self) -> int:
        """The schemas table's newest seq; 0 when it has no row, or does not exist."""

    @abstractmethod
    def add_schema_row(self, fingerprint: str, changes: str) -> int:
        """Add a row for the newest history event, inside its transaction; its seq."""

    def _recorded(self) -> Any:
        from worker.schema.recorded import RecordedSchema  # only steps that record load it

        if self._recorded_schema is None:
            self._recorded_schema = RecordedSchema()
        return self._recorded_schema

    def schema_scope(self, stamps: Any) -> Any:
        """What this store's schema reader needs to read only what the step changed: by
        default `stamps`, the catalog's stamps at the step's mark and now (PostgreSQL
        finds what its transaction wrote); SQLite gives the tables its authorizer saw."""
        return stamps

    def schema_mark(self) -> Any:
        """The catalog's stamp, in a step's transaction before its migration code: what
        record_schema() compares with to skip reading a catalog the step did not change."""
        return self._recorded().mark(self)

    def record_schema(self, since: Any = None) -> None:
        """After a history event, in its transaction: a row with the schema's fingerprint
        and the objects the event changed (see worker/schema/recorded.py); the catalog is
        read unless its stamp is still `since` (None: always read)."""
        self._recorded().record(self, since)

    def schema_drift(self) -> Any:
        """The live schema's differences from the one recorded after the last event (a
        list of shape.Difference, empty when none); None when nothing is recorded."""
        return self._recorded().drift(self)

    @abstractmethod
    def scratch(self) -> AbstractContextManager[Store]:
        """A store on a new, empty database of the same kind, with this one's tracking
        table name, dropped when the context ends (SQLite: a temporary file; a server: a
        database created and dropped through this store's session). Nothing of this
        store's database is written. Raises ReplyError(PRECONDITION_FAILED) when the
        server refuses to create one, saying why."""

    def _unmanaged(self) -> set[str]:
        """The tables a schema read leaves out: ours, and the displaced tool's."""
        names = set(self.tables)
        if self.displaced is not None:
            names.add(self.displaced)
        return names

    def forget_partial(self, version: int) -> None:
        """Drop the step record of `version`, inside the transaction of a resolve."""
        return None

    def waiting(self) -> Any:
        """What the migration running now waits for (pg_waits.LockWait: the lock, who holds
        it), or None; read from another thread (health). SQLite waits unseen."""
        return None

    def watch_lock_waits(self, on_wait: Callable[[Any], None]) -> None:
        """Have `on_wait(LockWait)` called, from another thread, when a statement of
        migration code starts waiting for a lock; a store that cannot see waits never
        calls it."""
        return None

    def settle(self) -> None:
        """After a write request: leave the database so that a change made to it by other
        means can be told from this worker's own (SQLite: an empty -wal); by default,
        nothing to do."""
        return None

    def watching_locks(self) -> AbstractContextManager[LockWatch]:
        """Around a dry run's transaction: a watch on the locks its migrations take, told
        by the engine when each migration begins; by default one that sees nothing."""
        return nullcontext(NO_LOCK_WATCH)

    def reading(self) -> AbstractContextManager[None]:
        """A consistent view for a read made of several queries (status: the stamp, then
        the rows); by default each query sees the last commit on its own."""
        return nullcontext()

    def stale_schema(self) -> bool:
        """Whether this connection's next read first reads the whole schema anew: SQLite's
        does once another connection changed it (a migration's DDL) since its last
        reading(), a cost that grows with every table. False by default."""
        return False

    def writing(self) -> AbstractContextManager[None]:
        """Around each write request, on the writer thread: this store's connection is the
        write's, lent to a read only between two of its transactions (see lent)."""
        return nullcontext()

    def lent(self, wait_s: float) -> AbstractContextManager[bool]:
        """From the socket thread: this store's connection for one read (True), once no
        write holds it: at once while none runs, else when a running write commits its
        transaction within `wait_s` (the write then waits until the read is done). False
        when it did not come in time, or is never lent (the default): read on reader()."""
        return nullcontext(False)

    def history_mark(self) -> HistoryMark | None:
        """The history's newest event (NO_EVENT when it has none), to ask tracking_changes()
        about later, in the snapshot of reading(); None when this store cannot tell what
        changed since one (the default: each status reads every row)."""
        return None

    def tracking_changes(self, since: HistoryMark, most: int) -> TrackingChanges | None:
        """The tracking rows of the versions that the history's events after `since` name,
        as they are now, with the count of every row and the sum of their versions' low 32
        bits, in the snapshot of reading(). None when it cannot be told: by default; when
        `since` is no longer the event at its seq (a history deleted or restored), more
        than `most` events came after it, or a tracking table is missing."""
        return None

    @abstractmethod
    def check_foreign_keys(self) -> None:
        """Raise ForeignKeyViolation if rows reference missing rows."""

    @abstractmethod
    def data_version(self) -> int:
        """Changes when another connection commits; with `commits`, says if anything did."""

    @abstractmethod
    def applied(self) -> list[AppliedMigration]:
        """Every recorded migration, in version order. Raises TrackingTableMissing when the
        tracking table was dropped by hand (its companions remain), ForeignTable when it is
        another program's, NotAdopted while it does not exist and the default name beside
        it holds another tool's table (see choose_table)."""

    @abstractmethod
    def record(
        self,
        version: int,
        name: str,
        checksum: str,
        execution_ms: float,
        applied_seq: int,
        request_id: bytes,
    ) -> None:
        """Mark a migration applied, inside the transaction that ran its up()."""

    @abstractmethod
    def unrecord(self, version: int) -> None:
        """Mark a migration not applied, inside the transaction that ran its down()."""

    @abstractmethod
    def record_event(self, event: Event) -> None:
        """Add an apply, rollback or baseline to the history, inside its transaction."""

    @abstractmethod
    def repeatables(self) -> list[AppliedRepeatable]:
        """Every repeatable migration ever applied, as last applied, in no given order
        (none before the repeats table exists).

        They are kept in a table of their own, one row per name, rather than found as the
        newest `repeatable` event of each name in the history: status reads a few rows
        instead of every event ever recorded, and a history dropped by hand does not make
        every repeatable migration run again."""

    @abstractmethod
    def record_repeatable(
        self, name: str, checksum: str, execution_ms: float, request_id: bytes
    ) -> None:
        """Note a repeatable migration applied with `checksum`, replacing what was noted of
        it, inside the transaction that ran it."""

    @abstractmethod
    def history(self, limit: int | None = None) -> list[Event]:
        """The history, oldest first: every event, or the `limit` most recent."""

    @abstractmethod
    def events_of(self, request_id: bytes, action: str) -> list[Event]:
        """What one request did of `action`, oldest first (to resume it after a crash)."""

    @abstractmethod
    def stored_reply(self, request_id: bytes) -> dict[str, Any] | None:
        """The reply already given to this request id, if it was stored; raises
        ReplyEvicted when it was stored and has been pruned since."""

    @abstractmethod
    def store_reply(self, request_id: bytes, reply: dict[str, Any]) -> None:
        """Keep a reply for resends, inside the transaction whose effect it reports.

        The last KEEP_REPLIES are kept. Of the ones pruned, the newest of each node (see
        node_of) is remembered by id in the evicted table, so that its resend is told its
        reply is gone instead of running again; older ones need no memory, since a node
        resends only its newest write.
        """


def tracking_facts(store: Store) -> dict[str, Any]:
    """What health says of a store's tracking table: its name, and, when it is not the
    default, why (the default name holds another program's table)."""
    facts: dict[str, Any] = {"tracking_table": store.label(store.tables.migrations)}
    if store.displaced is not None:
        facts["renamed_because"] = (f"{store.label(store.displaced)} is another tool's table,"
                                    " left as it is")
    return facts


class CrashHook:
    """Test hook: die right after a commit, before any reply, when a trigger file exists.

    Two things must both be true for it to fire, so it never does by accident: the worker
    was started with MIGRATIONS_TEST_CRASH_AFTER_COMMIT holding an absolute path (the
    crash tests set it; a worker that has it logs a warning at start), and a file exists
    at that path at the moment of a commit. The file is removed first, so the next worker
    survives, then this process SIGKILLs itself.
    """

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger

    @classmethod
    def from_environment(cls) -> CrashHook | None:
        trigger = os.environ.get(CRASH_AFTER_COMMIT_ENV, "")
        if not trigger:
            return None
        if not os.path.isabs(trigger):
            log.warning("ignoring %s=%r: not an absolute path", CRASH_AFTER_COMMIT_ENV, trigger)
            return None
        log.warning("test hook on: a commit kills this worker while %s exists", trigger)
        return cls(trigger)

    def fire_if_armed(self) -> None:
        try:
            os.unlink(self.trigger)
        except FileNotFoundError:
            return
        log.warning("crashing after commit, as %s asked", CRASH_AFTER_COMMIT_ENV)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
