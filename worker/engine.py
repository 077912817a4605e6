"""The migration engine: plan and run every request against a store and a catalog.

Pure logic: no sockets, no processes, no connection: the store owns that. Each handler takes
the request id and the request's fields and returns the reply body (without in_reply_to), or
raises ReplyError. A request id that already has a stored reply gets that reply again and
nothing runs twice, which makes resending a request after a worker crash safe.

    migrate(R):   for each pending migration, in version order, one transaction:
                  BEGIN IMMEDIATE; up(db); record(version, by R); history; [reply]; COMMIT
                  then for each repeatable migration changed since it was last applied, in
                  name order, the same (record_repeatable(name, checksum, by R))
    rollback(R):  for each step, newest first, one transaction:
                  BEGIN IMMEDIATE; down(db); unrecord; history; [reply]; COMMIT
    baseline(R), adopt(R): one transaction: BEGIN; [read the other tool's table, match it];
                  record each, running none; history; reply; COMMIT
    dry run:      the same statements in ONE transaction, rolled back at the end
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from broker.errors import (
    CRASH,
    MALFORMED_REQUEST,
    MIGRATION_FAILED,
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
    ReplyError,
    cancelled_before_start,
)
from broker.kinds import PROGRESS, WAITING
from worker.ahead import Ahead
from worker.catalog import Catalog, Loaded, Migration, Repeatable, checksum_of
from worker.journal import MAX_DEATHS, CrashJournal, NoJournal
from worker.params import Params
from worker.status import MOST_PATCHED_EVENTS, StatusBasis, basis_of, patched
from worker.steps import StatementSteps, first_line, partial_field, span
from worker.steps import checksum_of as checksum_of_statement
from worker.stores.interface import (
    NO_LOCK_WATCH,
    REPEATABLE_VERSION,
    AppliedMigration,
    AppliedRepeatable,
    Event,
    LockTimeout,
    LockWatch,
    MomentaryRefusal,
    NotAdopted,
    Partial,
    Store,
    TrackingTableMissing,
)

if TYPE_CHECKING:
    from worker.adopt.plan import Plan  # only adopt loads it
    from worker.lint.recording import Recorder  # imports pglast: only a lint loads it

log = logging.getLogger(__name__)

Reply = dict[str, Any]
Entry = dict[str, Any]
MigrationFile = Migration | Repeatable  # what a step applies: a versioned file or a repeatable
NO_PARAMS = Params({})
# What migration code may raise and still be only a failed migration: sys.exit() and a
# KeyboardInterrupt raised by hand must not take the worker down (a real SIGINT only sets the
# stop flag, so it never arrives as KeyboardInterrupt).
MIGRATION_ERRORS = (Exception, SystemExit, KeyboardInterrupt)
PROBLEM_KINDS = ("changed", "missing", "out_of_order")
LINT_RESULT = "lint_result"
LINT_NOTE = ("lint's rules are PostgreSQL's (locks that make a server under load wait, renames"
             " that break running code), and none of them applies to {database}, so nothing"
             " was linted")
DIALECT_NAMES = {"sqlite": "SQLite", "mysql": "MariaDB and MySQL"}
MAY_BE_ALLOWED = frozenset({"out_of_order"})  # changed and missing are never accepted
SCHEMA_DRIFT = "schema_drift"  # a validation problem: the live schema is not the recorded one
ACCEPT_DRIFT = "accept_drift"  # the history's action for a migrate that accepted it
MAX_DRIFT_TEXT = 4000  # characters of the differences the history's event keeps
REPEATABLE = "repeatable"  # the history's action (and health's) for a repeatable applied
# The history's actions for a migration that stopped partway, resolved by a person.
RESOLVED_APPLIED, RESOLVED_NOT_APPLIED = "resolved_applied", "resolved_not_applied"
LOCK_RETRIES = 5  # more tries of a migration after a lock timeout, if not told
RETRY_PAUSE_S = 0.5  # the wait before the first retry; it doubles each time, jittered
MAX_RETRY_PAUSE_S = 30.0
PAUSE_SLICE_S = 0.1  # a pause looks this often for a stop request (a signal sets a flag)


class StatusStamp(NamedTuple):
    """What a status reply depends on: the folder listing and the database's contents."""

    folder_generation: int
    commits: int  # by this worker's store
    data_version: int  # moves when another program commits
    # The repeatable files' stats: status reads their checksums, and an edit in place
    # leaves the folder's stamp as it was.
    repeatable_files: tuple[object, ...] = ()


class Interrupted(Exception):
    """The worker was asked to stop between two migrations; the request gets no reply here."""


class Cancelled(Exception):
    """Raised at a cancellation point (a statement of migration code, its return) once the
    running request was cancelled; the step fails and is rolled back."""


class Running(NamedTuple):
    """The step a write is taking now, for `health`."""

    version: int | None  # None: a repeatable migration
    name: str
    action: str  # "apply", "rollback" or "repeatable"
    since: float  # time.monotonic() when the step started
    done: int  # steps of the request done before it
    total: int  # steps the request takes in all
    attempt: int = 1  # its try: more than 1 after lock timeouts


class Step(NamedTuple):
    """One migration to apply or revert, with its code loaded."""

    migration: MigrationFile
    loaded: Loaded


class RepeatablePlan(NamedTuple):
    """What a migrate does with the folder's repeatable migrations."""

    due: list[Repeatable]  # to apply, in name order: new, or changed since last applied
    done: list[Entry]  # those this same request applied before a crash, as its reply lists them


class Engine:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        should_stop: Callable[[], bool] = lambda: False,
        journal: CrashJournal | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        on_progress: Callable[[bytes, Reply], None] | None = None,
        lock_retries: int = LOCK_RETRIES,
    ) -> None:
        """`should_stop` says the worker is stopping (the request is left for a resend);
        `cancelled` that the running request was cancelled (it ends with error 14 and
        `"cancelled": true` at the next cancellation point); `on_progress` gets a
        migration_progress body for each step a real run commits, and a migration_waiting
        body when a step waits for a lock or is tried again. A step whose statement gave
        up waiting for a lock (LockTimeout) is tried `lock_retries` more times."""
        self.store = store
        self.catalog = catalog
        self.should_stop = should_stop
        self.cancelled = cancelled
        self.on_progress = on_progress
        self.lock_retries = lock_retries
        self.running: Running | None = None  # read by health, from another thread
        self.wake = threading.Event()  # set by a cancel: a pause between tries ends at once
        self._waiting_run: _Run | None = None  # the run whose waits are told (progress)
        store.watch_lock_waits(self._lock_wait_started)
        self.journal = journal if journal is not None else NoJournal()
        self._status: Reply = {}
        self._status_stamp = StatusStamp(-1, -1, -1)  # what the kept reply was computed from
        self._status_basis: StatusBasis | None = None  # how to patch it (worker/status.py)
        self._status_checked = False  # the stamp was checked in the current batch

    # -- reads -----------------------------------------------------------------------------

    def status(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Every migration, file or recorded, in version order, with whether it is applied.

        The reply is kept while neither the folder nor the database changes, and the same
        object is returned. This store's own commits are counted; the folder and other
        programs' commits (data_version, which costs a file lock) are checked once per batch
        (the requests of one message, sent together): one snapshot answers them all.
        """
        if not self._status_checked or self._status_stamp.commits != self.store.commits:
            migrations = self.catalog.migrations()
            if self._stamp() != self._status_stamp:
                # Rebuilt inside one snapshot, whose own stamp is the one kept; kept only
                # once built (a status refused, error 22, keeps nothing to hand out, and
                # the next one reads everything).
                basis, self._status_basis = self._status_basis, None
                with self.store.reading():
                    stamp = self._stamp()
                    self._status, self._status_basis = (
                        self._patched_status(basis, stamp) or self._compute_status(migrations))
                    self._status_stamp = stamp
            self._status_checked = True
        return self._status

    def _stamp(self) -> StatusStamp:
        return StatusStamp(self.catalog.generation, self.store.commits, self.store.data_version(),
                           self.catalog.repeatables_stamp())

    def new_batch(self) -> None:
        """Requests received from here on may see changes made since the last batch."""
        self._status_checked = False

    def _patched_status(
        self, basis: StatusBasis | None, stamp: StatusStamp
    ) -> tuple[Reply, StatusBasis] | None:
        """The kept reply with the tracking rows changed since patched in, or None when it
        is to be computed in full: nothing was kept to patch, the folder or a repeatable
        file changed, or the store cannot tell exactly what changed (see worker/status.py).
        """
        kept = self._status_stamp
        if basis is None or stamp.folder_generation != kept.folder_generation or (
                stamp.repeatable_files != kept.repeatable_files):
            return None
        changes = self.store.tracking_changes(basis.mark, MOST_PATCHED_EVENTS)
        if changes is None:
            return None
        patch = patched(self._status["migrations"], basis, changes)
        if patch is None:
            return None
        entries, basis = patch
        return self._status_reply(entries), basis

    def _compute_status(self, migrations: list[Migration]) -> tuple[Reply, StatusBasis | None]:
        """The reply read in full, and what a later one may patch it from (None: nothing,
        where the store cannot tell changes or steps stop partway)."""
        rows = self.store.applied()
        applied = {row.version: row for row in rows}
        files = {migration.version: migration for migration in migrations}
        partials = {partial.version: partial for partial in self.store.partials()}
        entries = []
        for version in sorted(files.keys() | applied.keys() | partials.keys()):
            # An applied migration whose file is gone is still listed, under its recorded name.
            name = (files[version].name if version in files else applied[version].name
                    if version in applied else partials[version].name)
            entry = {"version": version, "name": name, "applied": version in applied}
            if version in partials:  # only where DDL commits at once: MariaDB, MySQL
                entry["partial"] = partial_field(partials[version])
            entries.append(entry)
        mark = None if self.store.implicit_commits else self.store.history_mark()
        basis = None if mark is None else basis_of(entries, files, rows, mark)
        return self._status_reply(entries), basis

    def _status_reply(self, entries: list[Entry]) -> Reply:
        reply: Reply = {"type": "migration_status", "migrations": entries}
        repeatables = self._repeatables_status()
        if repeatables:  # only then: a folder without them keeps the reply it always had
            reply["repeatables"] = repeatables
        return reply

    def _repeatables_status(self) -> list[Entry]:
        """Each repeatable migration, file or recorded, by name: what a migrate would do
        with it (`state`), its file's checksum (null when there is none, or it cannot be
        read) and the one it was last applied with (null: never), and when."""
        files = {repeatable.name: repeatable for repeatable in self.catalog.repeatables()}
        recorded = {row.name: row for row in self.store.repeatables()}
        entries = []
        for name in sorted(files.keys() | recorded.keys()):
            file, row = files.get(name), recorded.get(name)
            checksum = None
            if file is not None:
                # One that cannot be read is said as null; applying it fails saying why.
                with contextlib.suppress(OSError):
                    checksum = self.catalog.checksum(file)
            if row is None:
                state = "pending"
            elif file is None:
                state = "missing"  # what it made stays; nothing runs
            else:
                state = "outdated" if self._repeatable_changed(file, row) else "applied"
            entries.append({
                "name": name, "state": state, "checksum": checksum,
                "applied_checksum": None if row is None else row.checksum,
                "applied_at": None if row is None else row.applied_at,
            })
        return entries

    def validate(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Drift: applied files edited since (`changed`), applied versions without a file
        (`missing`), pending versions below the newest applied one (`out_of_order`).
        Repeatable migrations are meant to be edited, and never drift; the folder's are
        listed only so that two files of one name are error 22 here too."""
        with self.store.reading():
            applied = self.store.applied()
            drift = self._schema_drift()
        self.catalog.repeatables()
        problems = self._problems(self.catalog.migrations(), applied) + drift
        return {"type": "validation", "ok": not problems, "problems": problems}

    def _schema_drift(self) -> list[Entry]:
        """The schema_drift problem, when the live schema differs from the one recorded
        after the last step: each difference in words. None while a step stopped partway
        (it is reported as such), or before anything was recorded."""
        if self._partials():
            return []
        found = self.store.schema_drift()
        if not found:
            return []
        return [{"kind": SCHEMA_DRIFT, "differences": [difference.text for difference in found]}]

    def history(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Every apply, rollback and baseline ever recorded, oldest first (or the last N)."""
        limit = params.integer("limit", minimum=1)
        events = [
            {
                # A repeatable migration's steps have no version (stored as 0).
                "version": None if event.version == REPEATABLE_VERSION else event.version,
                "name": event.name,
                "action": event.action,
                "checksum": event.checksum,
                "started_at": event.started_at,
                "duration_ms": round(event.duration_ms, 3),
                "src": event.src,
            }
            for event in self._history(limit)
        ]
        return {"type": "migration_history", "events": events}

    def _history(self, limit: int | None) -> list[Event]:
        with self.store.reading():
            return self.store.history(limit)

    def dump(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """The managed schema as SQL that recreates it, then the INSERTs that record the
        applied versions, and the live schema's fingerprint (see worker/dump/dumping.py).
        Raises error 22 when the database's dump program (pg_dump, mysqldump) is missing."""
        from worker.dump.dumping import dump  # only a dump loads it

        return dump(self.store)

    def lint(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Lint the pending migrations (or those of `versions`) by the PostgreSQL rules of
        worker/lint: a .sql file by its text, a .py file by what its dry run executes (one
        transaction, rolled back: nothing is ever committed). On SQLite none applies, and the
        reply says so. Raises error 22 for a version no file has, or without pglast."""
        versions = params.integers("versions", minimum=1)
        return self._once(request_id, lambda: self._lint(request_id, versions), keep=False)

    def verify(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Test every migration's down, and up again, on a scratch database built from the
        folder, and compare what the folder builds with the live schema (worker/verify.py).
        The live database is only read. Raises error 22 when no scratch database can be
        made (a role that may not create one)."""
        from worker import verify  # only verify loads the schema readers

        def scratch_engine(store: Store, catalog: Catalog) -> Engine:
            # A cancel or a stop reaches the scratch database's steps too.
            return Engine(store, catalog, should_stop=self.should_stop,
                          cancelled=self.cancelled)

        return self._once(request_id, lambda: verify.verify(
            self.store, self.catalog, scratch_engine), keep=False)

    # -- writes ----------------------------------------------------------------------------

    def migrate(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Apply every pending migration (up to `to`) in version order, each in its own
        transaction; refused while validation finds a problem not allowed."""
        to = params.integer("to", minimum=1)
        dry_run = params.flag("dry_run")
        allowed = MAY_BE_ALLOWED if params.flag("allow_out_of_order") else frozenset()
        if params.flag("accept_drift"):
            allowed |= {SCHEMA_DRIFT}
        progress = params.flag("progress")
        return self._once(
            request_id,
            lambda: self._migrate(request_id, params.src, to, allowed, dry_run, progress),
            keep=not dry_run,
        )

    def rollback(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Revert the most recently applied migration, or `steps` of them, or all above `to`,
        newest first, each step in its own transaction."""
        params.at_most_one("steps", "to")
        steps = params.integer("steps", minimum=1)
        to = params.integer("to", minimum=0)
        dry_run = params.flag("dry_run")
        progress = params.flag("progress")
        accept_drift = params.flag("accept_drift")
        return self._once(
            request_id,
            lambda: self._rollback(request_id, params.src, steps, to, dry_run, progress,
                                   accept_drift),
            keep=not dry_run,
        )

    def baseline(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Record every migration up to `to` as applied without running it, for a database
        that already has that schema; refused when anything is recorded."""
        to = params.integer("to", minimum=1)
        if to is None:
            raise ReplyError(MALFORMED_REQUEST, "baseline needs to: the version to record up to")
        return self._once(request_id, lambda: self._baseline(request_id, params.src, to))

    def adopt(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Record as applied, without running any, the migrations another tool (`from`)
        applied, as its own tracking table says, in one transaction; `dry_run` shows what
        would be recorded. Refused (error 22, nothing changed) when anything is recorded
        here already, or that tool's state is not clean or does not match the files here
        (see worker/adopt/plan.py). The other tool's table is read, never written."""
        from worker.adopt.tools import TOOLS

        tool = params.choice("from", tuple(TOOLS))
        if tool is None:
            raise ReplyError(MALFORMED_REQUEST,
                             f"adopt needs from: the tool, one of {', '.join(TOOLS)}")
        dry_run = params.flag("dry_run")
        return self._once(request_id, lambda: self._adopt(request_id, params.src, tool, dry_run),
                          keep=not dry_run)

    def resolve(self, request_id: bytes, params: Params = NO_PARAMS) -> Reply:
        """Say how a migration that stopped partway stands, after a person repaired it by
        hand (only where DDL commits at once): `applied` true records it applied (its
        up finished by hand, or its down undone), false not applied (its up undone, or
        its down finished). Its step record goes, and the history keeps the resolve."""
        version = params.integer("version", minimum=1)
        if version is None or "applied" not in params.fields:
            raise ReplyError(MALFORMED_REQUEST,
                             "resolve needs version: V and applied: true or false")
        applied = params.flag("applied")
        return self._once(request_id,
                          lambda: self._resolve(request_id, params.src, version, applied))

    def cancel_unstarted(
        self,
        request_id: bytes,
        params: Params = NO_PARAMS,
        resume: Callable[[bytes, Params], Reply] | None = None,
    ) -> Reply:
        """Answer a write that was cancelled before it started: error 14, nothing run; the
        answer is stored like any other, unless the request was answered before.

        A write resent after a worker died may have taken steps already: then it did start,
        and `resume` (its own handler, run while `cancelled()` is true) stops it before its
        next step, so that its reply lists the steps it took, as for a write cancelled while
        it ran, instead of saying that nothing ran.
        """
        if resume is not None and self._took_steps(request_id):
            return resume(request_id, params)

        def refuse() -> Reply:
            raise cancelled_before_start()

        return self._once(request_id, refuse)

    def _took_steps(self, request_id: bytes) -> bool:
        return any(self.store.events_of(request_id, action)
                   for action in ("apply", "rollback", REPEATABLE))

    # -- lock waits ------------------------------------------------------------------------

    def _lock_wait_started(self, wait: Any) -> None:
        """From the store's watch thread: a statement of the running step waits for a lock."""
        run, running = self._waiting_run, self.running
        if running is not None:
            what = (f"repeatable migration {running.name}" if running.version is None
                    else f"migration {running.version} {running.name}")
            log.warning("%s waits for %s", what, wait.describe())
        if run is not None and running is not None:
            run.tell_wait("waiting", running, wait)

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the request is cancelled or the worker is to stop."""
        deadline = time.monotonic() + seconds
        self.wake.clear()
        while not (self.cancelled() or self.should_stop()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wake.wait(min(left, PAUSE_SLICE_S))

    # -- exactly once ----------------------------------------------------------------------

    def _once(self, request_id: bytes, action: Callable[[], Reply], keep: bool = True) -> Reply:
        """Run a write at most once per request id, unless it killed the worker 3 times.

        With `keep` (every write but a dry run, which changes nothing) its answer is stored
        in the transaction of its last step, and a resend gets that answer; one whose
        stored answer was pruned since gets error 13 saying so (ReplyEvicted), and nothing
        runs. An answer that depends on the moment (busy: 11; a MomentaryRefusal such as a
        tracking table dropped by hand, 22 until baseline) is not stored.
        """
        # Owned first: a plan made while another host's worker still wrote would be stale.
        self.store.ensure_owner()
        stored = self.store.stored_reply(request_id) if keep else None
        if stored is not None:
            log.info("request %s was answered before; sending the stored reply", request_id.hex())
            return stored
        deaths, culprit = self.journal.deaths(request_id)
        try:
            if deaths >= MAX_DEATHS:
                raise ReplyError(
                    CRASH,
                    f"{culprit} killed the worker {deaths} times, so the request was skipped;"
                    f" {culprit} is not applied",
                )
            return action()
        except ReplyError as error:
            if (keep and error.code != TEMPORARILY_UNAVAILABLE
                    and not isinstance(error, MomentaryRefusal)):
                self._store_error(request_id, error)
            raise
        finally:
            self.running = None
            self.journal.finished(request_id)

    def _store_error(self, request_id: bytes, error: ReplyError) -> None:
        """Keep an error answer, so a resent request gets it, not a second attempt.

        When even that write fails (the failure was the database itself: read-only, full),
        the answer still goes out; a resend then tries again, which is safe because the
        failed step left nothing behind.
        """
        try:
            with self.store.transaction():
                self.store.store_reply(request_id, error.body())
        except Exception as exc:
            log.warning("could not keep the error reply of %s: %s", request_id.hex(), exc)

    # -- migrate ---------------------------------------------------------------------------

    def _migrate(
        self,
        request_id: bytes,
        src: str | None,
        to: int | None,
        allowed: frozenset[str],
        dry_run: bool,
        progress: bool,
    ) -> Reply:
        applied = self._applied(dry_run)
        migrations = self.catalog.migrations()
        self._check_target(to, migrations, applied, allow_zero=False)
        drift = self._schema_drift()
        problems = self._problems(migrations, applied) + drift
        refused = [p for p in problems if p["kind"] not in allowed]
        if refused:
            raise _with_dry_run(_refusal(refused), dry_run)
        if drift and not dry_run:
            self._accept_drift(request_id, src, drift[0]["differences"])
        done_versions = {row.version for row in applied}
        # Migrations this same request applied before a crash are part of its answer.
        done = [
            {"version": row.version, "name": row.name, "status": "applied"}
            for row in applied
            if row.request_id == request_id
        ]
        pending = [
            m
            for m in migrations
            if m.version not in done_versions and (to is None or m.version <= to)
        ]
        last_seq = max((row.applied_seq for row in applied), default=0)
        partials = self._partials()
        # A resend after a worker died lists the steps it took before, as an error 14 does.
        _refuse_partials(partials, {m.version for m in pending}, dry_run,
                         taken={"applied": done})
        plan = self._repeatables_plan(request_id, to, migrations)
        run = _Run(self, request_id, src, "apply", done, dry_run, plain=False, progress=progress,
                   repeatables=None if plan is None else plan.done)
        run.partials = partials
        # Repeatables after every versioned one: they are written against the newest schema.
        steps: list[MigrationFile] = [*pending, *(plan.due if plan is not None else ())]
        seq = last_seq

        def record(step: Step, elapsed_ms: float) -> None:
            if isinstance(step.migration, Repeatable):
                self.store.record_repeatable(
                    step.migration.name, step.loaded.checksum, elapsed_ms, request_id)
            else:
                self.store.record(
                    step.migration.version,
                    step.migration.name,
                    step.loaded.checksum,
                    elapsed_ms,
                    seq,
                    request_id,
                )
            run.record_event(step, elapsed_ms)
            if not dry_run and step.migration is steps[-1]:
                self.store.store_reply(request_id, _applied_reply(*run.taken_with(step)))

        with run.series(steps) as taking:
            for migration in taking:
                if isinstance(migration, Repeatable):
                    run.take(migration, record)
                    log.info("applied repeatable migration %s", migration.name)
                    continue
                seq += 1
                run.take(migration, record)
                log.info("applied %s %s", migration.version, migration.name)
        return run.outcome(_applied_reply(*run.taken()))

    def _accept_drift(self, request_id: bytes, src: str | None, texts: list[str]) -> None:
        """Record that a migrate accepted the schema as it is: an event in the history
        with the differences, and the live schema as the recorded one from now on."""
        description = "; ".join(texts)
        if len(description) > MAX_DRIFT_TEXT:
            description = description[:MAX_DRIFT_TEXT - 3] + "..."
        with self.store.transaction():
            self.store.record_event(Event(REPEATABLE_VERSION, description, ACCEPT_DRIFT, "",
                                          _utc_now(), 0.0, src, request_id))
            self.store.record_schema()
        log.warning("accepted schema drift: %s", description)

    def _partials(self) -> dict[int, Partial]:
        """The steps that stopped partway, by version (only where DDL commits at once)."""
        if not self.store.implicit_commits:
            return {}
        return {partial.version: partial for partial in self.store.partials()}

    def _repeatables_plan(
        self, request_id: bytes, to: int | None, migrations: list[Migration]
    ) -> RepeatablePlan | None:
        """Which repeatable migrations a migrate applies: each one never applied, or whose
        file changed since it was last applied, by name; None for a folder without any,
        whose replies say nothing of them.

        Only a migrate that leaves no versioned migration pending applies them: one with a
        `to` below the newest version leaves them for the migrate that gets there, since a
        repeatable is written against the newest schema (a view over the newest tables).
        (Flyway applies them whatever its target.) Those this request applied before a
        crash, unchanged since, are its `done`: the reply lists them, and they do not run
        again.
        """
        files = self.catalog.repeatables()
        if not files:
            return None
        recorded = {row.name: row for row in self.store.repeatables()}
        newest = max((migration.version for migration in migrations), default=0)
        due = ([] if to is not None and to < newest else
               [file for file in files if self._repeatable_changed(file, recorded.get(file.name))])
        again = {file.name for file in due}
        done = [_repeatable_entry(row.name, row.checksum)
                for row in sorted(recorded.values(), key=lambda row: row.name)
                if row.request_id == request_id and row.name not in again]
        return RepeatablePlan(due, done)

    def _repeatable_changed(self, file: Repeatable, row: AppliedRepeatable | None) -> bool:
        """Whether `file` is to be applied: never applied, or its checksum is not the one
        it was last applied with (by that checksum's rule, as validate compares)."""
        if row is None:
            return True
        try:
            return not self.catalog.source_checksum_matches(file, row.checksum)
        except OSError:
            return True  # unreadable: applying it fails, saying why (error 14)

    # -- rollback --------------------------------------------------------------------------

    def _rollback(
        self,
        request_id: bytes,
        src: str | None,
        steps: int | None,
        to: int | None,
        dry_run: bool,
        progress: bool,
        accept_drift: bool,
    ) -> Reply:
        applied = self._applied(dry_run)
        drift = self._schema_drift()
        if drift and not accept_drift:
            raise _with_dry_run(_refusal(drift, "rolled back"), dry_run)
        if drift and not dry_run:
            self._accept_drift(request_id, src, drift[0]["differences"])
        plain = steps is None and to is None
        # Steps this same request took before a crash are part of its answer.
        done = [
            {"version": event.version, "name": event.name, "status": "rolled_back"}
            for event in self.store.events_of(request_id, "rollback")
        ]
        partials = self._partials()
        recorded = {row.version for row in applied}
        # A migration that stopped partway is newer than every applied one: undone first.
        partly = sorted((AppliedMigration(p.version, p.name, "", 0, p.request_id)
                         for p in partials.values()
                         if p.action == "apply" and p.version not in recorded),
                        key=lambda row: row.version, reverse=True)
        newest_first = [*partly,
                        *sorted(applied, key=lambda row: row.applied_seq, reverse=True)]
        if to is not None:
            self._check_target(to, self.catalog.migrations(), applied, allow_zero=True)
            targets = [row for row in newest_first if row.version > to]
        else:
            wanted = (steps or 1) - len(done)
            if not newest_first and not done:
                raise _with_dry_run(
                    ReplyError(
                        PRECONDITION_FAILED, "nothing to roll back: no migration is applied"
                    ),
                    dry_run,
                )
            if wanted > len(newest_first):
                raise _with_dry_run(
                    ReplyError(
                        PRECONDITION_FAILED,
                        f"cannot roll back {steps} migrations: only"
                        f" {len(newest_first) + len(done)} are applied",
                    ),
                    dry_run,
                )
            targets = newest_first[:wanted]
        _refuse_partials(partials, {row.version for row in targets}, dry_run, rollback=True,
                         taken={} if plain else {"rolled_back": done})
        files = {m.version: m for m in self.catalog.migrations()}
        unrecorded = {row.version for row in partly}
        migrations = [self._file_of(row, files, done, dry_run, row.version in unrecorded)
                      for row in targets]
        run = _Run(self, request_id, src, "rollback", done, dry_run, plain, progress)
        run.partials = partials

        def unrecord(step: Step, elapsed_ms: float) -> None:
            self.store.unrecord(step.migration.version)
            run.record_event(step, elapsed_ms)
            if not dry_run and step.migration is migrations[-1]:
                entry = step.migration.entry(status="rolled_back")
                self.store.store_reply(request_id, _reply_of(plain, [*done, entry]))

        with run.series(migrations) as steps:
            for migration in steps:
                run.take(migration, unrecord)
                log.info("rolled back %s %s", migration.version, migration.name)
        return run.outcome(_reply_of(plain, done))

    def _file_of(
        self, row: AppliedMigration, files: dict[int, Migration], done: list[Entry],
        dry_run: bool, partly: bool = False,
    ) -> Migration:
        if row.version in files:
            return files[row.version]
        said = ("stopped partway (see status) and its file is missing, so it cannot be"
                " undone: undo it by hand, then send resolve with applied false" if partly
                else "is applied but its file is missing, so it cannot be rolled back")
        raise _with_dry_run(
            ReplyError(
                PRECONDITION_FAILED,
                f"migration {row.version} {row.name} {said}",
                **({"rolled_back": done} if done else {}),
            ),
            dry_run,
        )

    # -- resolve ---------------------------------------------------------------------------

    def _resolve(self, request_id: bytes, src: str | None, version: int, applied: bool
                 ) -> Reply:
        partial = self._partials().get(version)
        if partial is None:
            raise ReplyError(
                PRECONDITION_FAILED,
                f"migration {version} did not stop partway, so there is nothing to resolve"
                + ("" if self.store.implicit_commits else
                   " (on this database every migration commits whole, or not at all)"))
        recorded = {row.version: row for row in self.store.applied()}
        files = {migration.version: migration for migration in self.catalog.migrations()}
        checksum = ""
        if version in files:
            with contextlib.suppress(OSError):
                checksum = checksum_of(files[version].source())
        started_at = _utc_now()
        with self.store.transaction():
            if applied and version not in recorded:
                seq = max((row.applied_seq for row in recorded.values()), default=0) + 1
                self.store.record(version, partial.name, checksum, 0.0, seq, request_id)
            elif not applied and version in recorded:
                self.store.unrecord(version)
            self.store.forget_partial(version)
            action = RESOLVED_APPLIED if applied else RESOLVED_NOT_APPLIED
            self.store.record_event(Event(version, partial.name, action, checksum,
                                          started_at, 0.0, src, request_id))
            self.store.record_schema()
            reply = {"type": "migration_resolved", "version": version, "name": partial.name,
                     "applied": applied}
            self.store.store_reply(request_id, reply)
        log.info("resolved migration %s %s as %s", version, partial.name,
                 "applied" if applied else "not applied")
        return reply

    # -- baseline --------------------------------------------------------------------------

    def _baseline(self, request_id: bytes, src: str | None, to: int) -> Reply:
        recorded = self._recorded_before_recording()
        if recorded:
            raise ReplyError(
                PRECONDITION_FAILED,
                f"baseline is for a database with nothing recorded, and {len(recorded)}"
                " migrations are recorded here",
            )
        migrations = self.catalog.migrations()
        if to not in {m.version for m in migrations}:
            raise ReplyError(PRECONDITION_FAILED, f"no migration file has version {to}")
        chosen = [m for m in migrations if m.version <= to]
        entries = [m.entry(status="baselined") for m in chosen]
        reply = {"type": "migrations_baselined", "count": len(entries), "migrations": entries}
        started_at = _utc_now()
        with self.store.transaction(restore_tracking=True):
            since = None  # the first event reads the catalog; the others find it unchanged
            for seq, migration in enumerate(chosen, start=1):
                checksum = checksum_of(migration.source())
                self.store.record(
                    migration.version, migration.name, checksum, 0.0, seq, request_id
                )
                self.store.record_event(
                    Event(migration.version, migration.name, "baseline", checksum,
                          started_at, 0.0, src, request_id)
                )
                self.store.record_schema(since)
                since = self.store.schema_mark()
            self.store.store_reply(request_id, reply)
        log.info("baselined %d migrations up to %s", len(chosen), to)
        return reply

    def _recorded_before_recording(self) -> list[AppliedMigration]:
        """What is recorded, for baseline and adopt, which make the tracking table: none
        while it was dropped by hand (they restore it) or while another tool's table
        stands in its default name's place (they are how ours begins)."""
        try:
            return self.store.applied()
        except (TrackingTableMissing, NotAdopted):
            return []

    # -- adopt -----------------------------------------------------------------------------

    def _adopt(self, request_id: bytes, src: str | None, tool_name: str, dry_run: bool
               ) -> Reply:
        from worker.adopt.plan import AdoptRefused, plan_adoption  # only adopt loads them
        from worker.adopt.tools import TOOLS

        tool = TOOLS[tool_name]
        recorded = self._recorded_before_recording()
        if recorded:
            raise _with_dry_run(AdoptRefused(tool_name, (
                f"adopt is for a database with nothing recorded by this tool, and"
                f" {len(recorded)} migrations are recorded in"
                f" {self.store.label(self.store.tables.migrations)}")), dry_run)
        if dry_run:
            try:
                plan = plan_adoption(self.store, tool, self.catalog.migrations())
            except ReplyError as error:
                raise _with_dry_run(error, dry_run) from None
            return self._adopted_reply(tool_name, plan, dry_run=True)
        started_at = _utc_now()
        # Read, matched and recorded in one transaction: what is recorded is what the other
        # tool's table said at that moment, and a refusal raised in it leaves nothing.
        with self.store.transaction(restore_tracking=True):
            plan = plan_adoption(self.store, tool, self.catalog.migrations())
            reply = self._adopted_reply(tool_name, plan, dry_run=False)
            since = None  # as in baseline
            for seq, adoption in enumerate(plan.adoptions, start=1):
                migration = adoption.migration
                checksum = checksum_of(migration.source())
                self.store.record(migration.version, migration.name, checksum, 0.0, seq,
                                  request_id)
                self.store.record_event(
                    Event(migration.version, migration.name, "adopt", checksum,
                          adoption.applied_at or started_at, 0.0, src, request_id))
                self.store.record_schema(since)
                since = self.store.schema_mark()
            self.store.store_reply(request_id, reply)
        log.info("adopted %d migrations from %s's %s", len(plan.adoptions), tool_name,
                 plan.table)
        return reply

    def _adopted_reply(self, tool_name: str, plan: Plan, dry_run: bool) -> Reply:
        from worker.adopt.tools import TOOLS

        reply = {
            "type": "migrations_adopted",
            "from": tool_name,
            # Bare names, as --table takes them (on a server: in the tracking schema).
            "from_table": TOOLS[tool_name].TABLE,
            "table": self.store.tables.migrations,
            "renamed": self.store.displaced is not None,
            "count": len(plan.adoptions),
            "migrations": [adoption.entry() for adoption in plan.adoptions],
        }
        return _with_dry_run(reply, dry_run)

    # -- lint ------------------------------------------------------------------------------

    def _lint(self, request_id: bytes, versions: list[int] | None) -> Reply:
        applied = {row.version for row in self._applied(dry_run=True)}
        migrations = self.catalog.migrations()
        pending = [m for m in migrations if m.version not in applied]
        if versions is None:
            chosen = pending
        else:
            files = {m.version: m for m in migrations}
            unknown = sorted(set(versions) - files.keys())
            if unknown:
                raise ReplyError(PRECONDITION_FAILED, "no migration file has version"
                                 f" {', '.join(map(str, unknown))}, so nothing was linted")
            chosen = [files[version] for version in sorted(set(versions))]
        if self.store.dialect != "postgresql":
            return {"type": LINT_RESULT, "ok": True, "findings": [], "linted": [],
                    "not_linted": [], "note": LINT_NOTE.format(
                        database=DIALECT_NAMES.get(self.store.dialect, self.store.dialect))}
        from worker.lint import parser

        parser.require()  # before anything imports it: error 22 saying how to install it
        from worker.lint.runner import lint_migrations

        not_linted = {m.version: "it is applied: a .py migration is linted by what its dry run"
                      " executes, which only a database without it can show"
                      for m in chosen if m.kind == "py" and m.version in applied}
        wanted = {m.version for m in chosen}
        dry = [m for m in pending if m.kind == "py" and m.version in wanted]
        ran = pending[: pending.index(dry[-1]) + 1] if dry else []
        recorder, failure = self._lint_dry_run(request_id, ran)
        if failure is not None:
            not_linted.update(failure)
        findings, unreadable = lint_migrations(chosen, recorder)
        not_linted.update(unreadable)
        left = [m.entry(file=m.path, reason=not_linted[m.version])
                for m in chosen if m.version in not_linted]
        return {
            "type": LINT_RESULT,
            "ok": not findings and not left,
            "findings": findings,
            "linted": [m.entry() for m in chosen if m.version not in not_linted],
            "not_linted": left,
        }

    def _lint_dry_run(
        self, request_id: bytes, migrations: list[Migration]
    ) -> tuple[Recorder, dict[int, str] | None]:
        """Run `migrations` as a dry run of migrate would, recording what each executes;
        returns the recorder and, when a step failed, why each .py step from it on is not
        fully linted (a .sql file is read from its text whatever its dry run did). An error
        11 (a lock not had in time, the server gone) is raised as it is."""
        from worker.lint.recording import Recorder

        recorder = Recorder()
        if not migrations:
            return recorder, None
        run = _Run(self, request_id, None, "apply", [], dry_run=True, plain=False,
                   on_load=recorder.wrap)
        try:
            with run.series(migrations) as steps:
                for migration in steps:
                    run.take(migration, lambda step, elapsed_ms: None)
        except ReplyError as error:
            failed = error.extra.get("failed")
            if error.code != MIGRATION_FAILED or failed is None:
                raise
            at = next(i for i, m in enumerate(migrations) if m.version == failed["version"])
            why = {}
            for migration in migrations[at:]:
                if migration.kind != "py":
                    continue
                why[migration.version] = (
                    f"its dry run failed, so what it executes after that was not linted:"
                    f" {failed['error']}" if migration is migrations[at] else
                    f"the dry run stopped at migration {failed['version']} {failed['name']},"
                    " before it ran")
            return recorder, why
        return recorder, None

    # -- shared ----------------------------------------------------------------------------

    def _applied(self, dry_run: bool) -> list[AppliedMigration]:
        """The recorded migrations; a tracking table dropped by hand is error 22 (marked as
        a dry run's when it was one)."""
        try:
            return self.store.applied()
        except TrackingTableMissing as error:
            raise _with_dry_run(error, dry_run) from None

    def _problems(
        self, migrations: list[Migration], applied: list[AppliedMigration]
    ) -> list[Entry]:
        files = {m.version: m for m in migrations}
        recorded = {row.version: row for row in applied}
        newest = max(recorded, default=0)
        found = []
        for row in applied:
            migration = files.get(row.version)
            if migration is None:
                found.append({"version": row.version, "name": row.name, "kind": "missing"})
            elif not self.catalog.source_checksum_matches(migration, row.checksum):
                found.append(migration.entry(kind="changed"))
        for migration in migrations:
            if migration.version not in recorded and migration.version < newest:
                found.append(migration.entry(kind="out_of_order"))
        return sorted(found, key=lambda problem: problem["version"])

    def _check_target(
        self,
        to: int | None,
        migrations: list[Migration],
        applied: list[AppliedMigration],
        allow_zero: bool,
    ) -> None:
        if to is None or (allow_zero and to == 0):
            return
        known = {m.version for m in migrations} | {row.version for row in applied}
        if to not in known:
            raise ReplyError(PRECONDITION_FAILED, f"no migration has version {to}")


class _Run:
    """One request's series of steps (applies or reverts) and how each one fails.

    A real run gives every step its own transaction. A dry run loads every step first, then
    runs them all in one transaction that is rolled back at the end, so each step sees the
    ones before it and nothing reaches the disk.
    """

    def __init__(
        self,
        engine: Engine,
        request_id: bytes,
        src: str | None,
        action: str,
        done: list[Entry],
        dry_run: bool,
        plain: bool,
        progress: bool = False,
        on_load: Callable[[Migration, Loaded], Loaded] | None = None,
        repeatables: list[Entry] | None = None,
    ) -> None:
        self.engine = engine
        self.on_load = on_load  # a dry run's: what it makes of each step it loads (lint's)
        self.progress = progress  # the request asked for a migration_progress per step
        self.plain = plain  # a plain rollback: its reply and errors list no steps
        self.store = engine.store
        self.request_id = request_id
        self.src = src
        self.action = action  # "apply" or "rollback"
        self.status = "applied" if action == "apply" else "rolled_back"
        self.done = done  # entries of the steps taken so far; the reply lists them
        # The repeatable migrations applied so far, listed apart (`repeatables`); None: the
        # folder has none, and replies have no such field.
        self.repeatables = repeatables
        self.dry_run = dry_run
        self._loaded: dict[str, Loaded] = {}  # a dry run's steps, by path
        self._ahead: Ahead | None = None  # a real series' files, prepared a step ahead
        self._dry_foreign_keys = True
        self._started_at = ""
        self._outside_transaction = False  # the real run's step in progress runs outside one
        self._schema_since: Any = None  # the catalog's stamp before the step (schema_mark)
        self._locks: LockWatch = NO_LOCK_WATCH  # a dry run's, when its store watches them
        self.total = 0  # steps of the request in all, those done before a crash included
        # Where DDL commits at once: the steps that stopped partway, by version (a resume
        # goes on from them), and the statements of the step in progress.
        self.partials: dict[int, Partial] = {}
        self._steps: StatementSteps | None = None

    def taken(self) -> tuple[list[Entry], list[Entry] | None]:
        """The steps taken, as the reply lists them: versioned, and repeatable (or None)."""
        return self.done, self.repeatables

    def taken_with(self, step: Step) -> tuple[list[Entry], list[Entry] | None]:
        """The steps taken with `step` among them: what the reply stored in its
        transaction says."""
        if isinstance(step.migration, Repeatable):
            return self.done, [*(self.repeatables or ()), self._entry_of(step)]
        return [*self.done, self._entry_of(step)], self.repeatables

    def _entry_of(self, step: Step) -> Entry:
        """A taken step as the reply lists it; a repeatable with the checksum applied."""
        if isinstance(step.migration, Repeatable):
            return _repeatable_entry(step.migration.name, step.loaded.checksum)
        return step.migration.entry(status=self.status)

    def _steps_done(self) -> int:
        return len(self.done) + len(self.repeatables or ())

    def _action_of(self, migration: MigrationFile) -> str:
        """The history's (and health's) action for a step of `migration`."""
        return REPEATABLE if isinstance(migration, Repeatable) else self.action

    @contextmanager
    def series(self, migrations: list[MigrationFile]) -> Iterator[Iterator[MigrationFile]]:
        """The migrations to take, one by one; for a dry run, inside its one transaction,
        which is rolled back however the series ends."""
        self.total = self._steps_done() + len(migrations)
        if not self.dry_run:
            # Each file is read and compiled while the step before it commits.
            self._ahead = Ahead(migrations) if len(migrations) > 1 else None
            try:
                yield self._until_stopped(migrations)
            finally:
                if self._ahead is not None:
                    self._ahead.close()
            return
        to_run, failure = [], None
        for migration in migrations:
            try:
                loaded = migration.load()
                self._loaded[migration.path] = (
                    loaded if self.on_load is None else self.on_load(migration, loaded))
            except MIGRATION_ERRORS as exc:
                failure = migration, exc  # the steps before it still run, as for real
                break
            to_run.append(migration)
        # Foreign keys cannot be switched inside a transaction: off for the whole dry run
        # if one step needs them off, and then checked after every step instead.
        self._dry_foreign_keys = all(loaded.foreign_keys for loaded in self._loaded.values())
        with (self.store.watching_locks() as self._locks,
              self.store.transaction(commit=False, foreign_keys=self._dry_foreign_keys)):
            yield iter(to_run)
            if failure is not None:
                with self._failing_as(failure[0]):
                    raise failure[1]

    def _until_stopped(self, migrations: list[MigrationFile]) -> Iterator[MigrationFile]:
        for migration in migrations:
            if self.engine.should_stop():
                raise Interrupted(f"stopped before {_named(migration)}")
            if self.engine.cancelled():
                raise self._cancelled(migration, started=False)
            yield migration

    def take(self, migration: MigrationFile, finish: Callable[[Step, float], None]) -> None:
        """Take one step: run up() or down(), then `finish` it (its tracking row, history
        and, for the last, the stored reply) in the same transaction; raise error 14
        naming the migration when anything in it fails.

        A step whose code declares it cannot run in a transaction (`transaction:false` on
        its own section's marker, `TRANSACTION = False` for both functions of a .py file)
        runs in autocommit mode and is finished in a transaction of its own right after:
        if it fails halfway, its earlier statements stay.
        """
        self.engine.journal.running(self.request_id, self._subject(migration))
        self._outside_transaction = False
        self._steps = None  # the statements of this step, once it runs (see _take_once)
        self.engine.running = Running(migration.version, migration.name,
                                      self._action_of(migration), time.monotonic(),
                                      self._steps_done(), self.total)
        with self._failing_as(migration):
            self._started_at = _utc_now()
            if self.dry_run:
                step = Step(migration, self._loaded[migration.path])
                self._locks.begin(migration.version, migration.name)
                finish(step, self._call(step, lock_timeout_s=self._lock_timeout_of(step)))
                if not self._dry_foreign_keys:
                    self.store.check_foreign_keys()
            else:
                step = Step(migration, migration.load() if self._ahead is None
                            else self._ahead.load(migration))
                self._take_trying(step, finish)
        if isinstance(migration, Repeatable):
            self.repeatables = [*(self.repeatables or ()), self._entry_of(step)]
        else:
            self.done.append(self._entry_of(step))
        if self.progress and self.engine.on_progress is not None and not self.dry_run:
            self.engine.on_progress(self.request_id, {
                "type": PROGRESS, "done": self._steps_done(), "total": self.total,
                **migration.entry(status=self.status),
            })

    def _subject(self, migration: MigrationFile) -> str:
        """What a step is, as texts name it: `migration 3 add_email`, `repeatable migration
        users_view`, `the rollback of migration 3 add_email`."""
        if self.action == "apply":
            return _named(migration)
        return f"the rollback of migration {migration.version} {migration.name}"

    def _take_trying(self, step: Step, finish: Callable[[Step, float], None]) -> None:
        """Take a real step, trying it again after a lock timeout, up to the engine's
        lock_retries more times, each after a longer pause with nothing held: the table's
        other users wait at most about one lock timeout per try."""
        self.engine._waiting_run = self
        try:
            for attempt in itertools.count(1):
                if attempt > 1:
                    self.engine.running = self.engine.running._replace(
                        attempt=attempt, since=time.monotonic())
                    self._started_at = _utc_now()
                try:
                    self._take_once(step, finish)
                    return
                except LockTimeout as timeout:
                    self._after_lock_timeout(step, timeout, attempt)
        finally:
            self.engine._waiting_run = None

    def _take_once(self, step: Step, finish: Callable[[Step, float], None]) -> None:
        loaded = step.loaded
        applying = self.action == "apply"
        in_transaction = loaded.up_transaction if applying else loaded.down_transaction
        lock_timeout_s = self._lock_timeout_of(step)
        self._outside_transaction = not in_transaction  # a failure's text says so
        self._steps = self._steps_of(step.migration)
        try:
            self._take_steps(step, finish, in_transaction, lock_timeout_s)
        finally:
            self._kept_partial(step.migration)

    def _steps_of(self, migration: MigrationFile) -> StatementSteps | None:
        """Where DDL commits at once, the statements of a versioned step, going on from
        where it stopped (a Partial of the same action); elsewhere None."""
        if not self.store.implicit_commits or isinstance(migration, Repeatable):
            return None
        partial = self.partials.get(migration.version)
        resume = partial if partial is not None and partial.action == self.action else None
        undoing = partial if partial is not None and partial.action != self.action else None
        return StatementSteps(migration.version, migration.name, self.action,
                              self.request_id, resume, undoing)

    def _kept_partial(self, migration: MigrationFile) -> None:
        """After a try: what stays of the step, for the next try of this request."""
        steps = self._steps
        if steps is None or not steps.saved:
            return
        stays = None if self._finished else steps.stays()
        if stays is None:
            self.partials.pop(migration.version, None)
        else:
            self.partials[migration.version] = stays

    def _take_steps(self, step: Step, finish: Callable[[Step, float], None],
                    in_transaction: bool, lock_timeout_s: float | None) -> None:
        loaded = step.loaded
        self._finished = False
        if in_transaction:
            with self.store.transaction(foreign_keys=loaded.foreign_keys):
                self._schema_since = self._schema_mark()
                finish(step, self._call(step, lock_timeout_s=lock_timeout_s))
                self._prepare_next()
            self._finished = True
        else:
            self._schema_since = None  # its statements commit one by one: read after them
            if not loaded.foreign_keys:
                raise ValueError("foreign keys off needs a transaction to check them")
            try:
                elapsed_ms = self._call(step, in_transaction=False,
                                        lock_timeout_s=lock_timeout_s)
                with self.store.transaction():
                    self._record_repairs(step)
                    finish(step, elapsed_ms)
                    self._prepare_next()
                self._finished = True
            except BaseException:
                self._record_repairs(step, alone=True)
                self._record_what_stays()
                raise

    def _prepare_next(self) -> None:
        """Right before the step's COMMIT, which waits with the GIL released: the next
        file read and compiled meanwhile (see worker/ahead.py)."""
        if self._ahead is not None:
            self._ahead.prepare_next()

    def _record_what_stays(self) -> None:
        """After a step outside a transaction failed: record the schema its statements
        left (a build's INVALID index), in a transaction of its own, so that what this
        worker did is never taken for drift; a failure to is logged, and drift shows it."""
        try:
            with self.store.transaction():
                self.store.record_schema()
        except Exception as exc:
            log.warning("could not record the schema a failed step left: %s", exc)

    def _lock_timeout_of(self, step: Step) -> float | None:
        loaded = step.loaded
        return loaded.up_lock_timeout_s if self.action == "apply" else loaded.down_lock_timeout_s

    def _after_lock_timeout(self, step: Step, timeout: LockTimeout, attempt: int) -> None:
        """After a try that gave up waiting for a lock (rolled back already): record it in
        the history, tell it, and pause before the next; raise the step's error 11 when no
        try is left (or a retry would run again what stayed of a migration outside a
        transaction), Interrupted when the worker is to stop."""
        migration = step.migration
        tries = self.engine.lock_retries + 1
        waited_ms = (time.monotonic() - self.engine.running.since) * 1000
        self._record_lock_timeout(step, waited_ms)
        subject = self._subject(migration)
        if attempt >= tries or not timeout.nothing_stayed:
            kept = ("it is not applied" if self.action == "apply" else "it stays applied")
            if not timeout.nothing_stayed:
                tried = (f"gave up after try {attempt}: it runs outside a transaction and its"
                         " earlier statements stayed, so it is not tried again")
            else:
                tried = f"gave up after {attempt} {'try' if attempt == 1 else 'tries'}"
            raise LockTimeout(
                f"{subject} {tried}: {timeout.text}; each try was rolled back, so {kept};"
                " try again once that session has finished",
                timeout.wait, timeout.nothing_stayed,
            )
        pause = min(MAX_RETRY_PAUSE_S, RETRY_PAUSE_S * 2 ** (attempt - 1))
        pause *= random.uniform(0.5, 1.0)  # tries of several hosts' workers drift apart
        log.warning("%s, try %d of %d: %s; trying again in %.2f s", subject, attempt,
                    tries, timeout.text, pause)
        self.tell_wait("retrying", self.engine.running, timeout.wait, attempt=attempt + 1,
                       after_s=pause)
        self.engine.pause(pause)
        if self.engine.should_stop():
            raise Interrupted(f"stopped while waiting to try {_named(migration)} again")
        if self.engine.cancelled():
            raise Cancelled("cancelled")

    def _record_lock_timeout(self, step: Step, waited_ms: float) -> None:
        """A "lock_timeout" event in the history, in a transaction of its own (the try's
        was rolled back). Failing to record it does not end the step."""
        try:
            with self.store.transaction():
                self.store.record_event(
                    Event(_stored_version(step.migration), step.migration.name, "lock_timeout",
                          step.loaded.checksum, self._started_at, waited_ms, self.src,
                          self.request_id))
        except (ReplyError, *MIGRATION_ERRORS) as exc:
            log.warning("could not record the lock timeout in the history: %s", exc)

    def tell_wait(self, event: str, running: Running, wait: Any, attempt: int | None = None,
                  after_s: float | None = None) -> None:
        """A migration_waiting body for a request that asked for progress: a statement of
        the step waits for a lock (`waiting`), or the step will be tried again
        (`retrying`, `after_s` from now); with the lock and who held it, when seen."""
        if not self.progress or self.dry_run or self.engine.on_progress is None:
            return
        body: Reply = {
            "type": WAITING, "event": event, "version": running.version,
            "name": running.name, "attempt": attempt or running.attempt,
            "tries": self.engine.lock_retries + 1,
        }
        name = _short(running.version, running.name)
        lock = "" if wait is None else f" for {wait.describe()}"
        if event == "retrying":
            body["after_s"] = round(after_s or 0, 3)
            text = (f"{name} gave up waiting{lock or ' for a lock'}; try {body['attempt']} of"
                    f" {body['tries']} in {body['after_s']:.1f} s")
        else:
            text = f"{name} is waiting{lock}"
        if wait is not None:
            shown = wait.as_reply()
            body.update(relation=shown["relation"], mode=shown["mode"],
                        blockers=shown["blockers"])
        body["text"] = text
        self.engine.on_progress(self.request_id, body)

    def _call(
        self, step: Step, in_transaction: bool = True, lock_timeout_s: float | None = None
    ) -> float:
        """Run the step's up() or down() with the guarded db; return its milliseconds.

        Raises LookupError for a file without up, ReplyError 22 for one without down, and
        RuntimeError if the migration ended its transaction itself.
        """
        function = step.loaded.up if self.action == "apply" else step.loaded.down
        if self._steps is not None and self._steps.undoing is not None and not self.dry_run:
            function = _undo_function(step, self._steps.undoing)
        if function is None and self.action == "apply":
            raise LookupError("the file defines no up(db) function")
        if function is None:
            migration = step.migration
            raise ReplyError(
                PRECONDITION_FAILED,
                f"migration {migration.version} {migration.name} has no"
                f" {step.loaded.down_named}, so it cannot be rolled back",
            )
        started = time.perf_counter()
        steps = None if self.dry_run else self._steps
        extra = {} if steps is None else {"steps": steps}
        with self.store.migration_db(in_transaction, check=self._check_cancelled,
                                     lock_timeout_s=lock_timeout_s, **extra) as db:
            function(db)
        self._check_cancelled()  # a cancel during code between statements ends here
        return (time.perf_counter() - started) * 1000

    def _record_repairs(self, step: Step, alone: bool = False) -> None:
        """A history event for each repair the store made while the step ran that no
        commit has recorded yet (see Store.repairs): in the step's own transaction, or,
        `alone`, in one of their own, as the step failed but what the store did outside a
        transaction stays done. A failure to record them then is logged, never raised over
        the step's."""
        events = [
            Event(_stored_version(step.migration), step.migration.name, repair.action,
                  step.loaded.checksum, self._started_at, repair.duration_ms, self.src,
                  self.request_id)
            for repair in self.store.repairs
        ]
        if not alone:
            for event in events:
                self.store.record_event(event)
            return
        if not events:
            return
        try:
            with self.store.transaction():
                for event in events:
                    self.store.record_event(event)
        except Exception as exc:
            log.warning("could not record %d repair(s) by migration %s %s in the history: %s",
                        len(events), step.migration.version, step.migration.name, exc)

    def _check_cancelled(self) -> None:
        if self.engine.cancelled():
            raise Cancelled("cancelled")

    def _done_field(self) -> dict[str, Any]:
        """The steps already taken, as an error reply lists them: `applied` for a migrate,
        `rolled_back` for a series of rollbacks; a plain rollback has no such field."""
        if self.status == "applied":
            if self.repeatables is None:
                return {"applied": self.done}
            return {"applied": self.done, "repeatables": self.repeatables}
        return {} if self.plain else {"rolled_back": self.done}

    def record_event(self, step: Step, elapsed_ms: float) -> None:
        """The step's history event and, for a real step, the schema after it."""
        self.store.record_event(
            Event(_stored_version(step.migration), step.migration.name,
                  self._action_of(step.migration),
                  step.loaded.checksum, self._started_at, elapsed_ms, self.src,
                  self.request_id)
        )
        if not self.dry_run:
            self.store.record_schema(self._schema_since)

    def _schema_mark(self) -> Any:
        """The catalog's stamp before a step's code runs, or None (read after it) when
        the step goes on from statements an earlier try left committed."""
        steps = self._steps
        if steps is not None and (steps.resume is not None or steps.undoing is not None):
            return None
        return self.store.schema_mark()

    @contextmanager
    def _failing_as(self, migration: MigrationFile) -> Iterator[None]:
        """Turn what a step raises into its reply: error 14 naming the migration, with the
        steps done before it; an 11 keeps them too; a dry run says it was one."""
        try:
            yield
        except Interrupted:
            raise  # the worker stops: no reply, the node resends the request
        except ReplyError as error:
            if self.engine.cancelled() and not error.extra.get("cancelled"):
                raise self._cancelled(migration, started=True) from error
            stays = self._stays()
            if stays is not None and "partial" not in error.extra:
                error.extra = {**error.extra, "partial": partial_field(stays)}
            # An 11 lists what was applied only when something was (as before dry runs).
            if error.code != TEMPORARILY_UNAVAILABLE or self._steps_done():
                error.extra = {**self._done_field(), **error.extra}
            raise self.outcome(error) from None
        except MIGRATION_ERRORS as exc:
            if self.engine.cancelled() and self._stays() is None:
                # Whatever the interrupted statement raised, the cause is the cancel.
                raise self._cancelled(migration, started=True) from exc
            cause = _describe(exc)
            log.error("%s of %s failed: %s", self.action, _short(migration.version,
                                                                  migration.name), cause)
            if self.engine.cancelled():
                cause = "cancelled"
            stays = self._partly_done(migration, cause)
            if stays is not None:
                if self.engine.cancelled():
                    stays.extra = {"cancelled": True, **stays.extra}
                raise self.outcome(stays) from exc
            if self._outside_transaction and not self.dry_run:
                what, outcome = ((_named(migration), "it is not recorded")
                                 if self.action == "apply" else
                                 (f"rollback of migration {migration.version} {migration.name}",
                                  "it stays applied"))
                text = (f"{what} failed outside a transaction (it says transaction:false),"
                        f" so {outcome}, and statements before the failing one stay: {cause}")
            elif isinstance(migration, Repeatable) and self.store.implicit_commits:
                # Not kept statement by statement: it is applied again whole, next time.
                text = (f"{_named(migration)} failed, so this version of it is not applied;"
                        " its statements before the failing one that commit at once (DDL)"
                        " stay, and the next migrate applies it again from its first"
                        f" statement: {cause}")
            elif isinstance(migration, Repeatable):
                # What an earlier application of it did stays: only this one is undone.
                text = (f"{_named(migration)} failed and was rolled back, so this version of"
                        f" it is not applied: {cause}")
            elif self.action == "apply":
                text = (f"migration {migration.version} {migration.name} failed and was"
                        f" rolled back, so it is not applied: {cause}")
            else:
                text = (f"rollback of migration {migration.version} {migration.name} failed,"
                        f" so it stays applied and unchanged: {cause}")
            error = ReplyError(
                MIGRATION_FAILED, text, **self._done_field(),
                failed=migration.entry(error=cause, **self._failed_statement()),
            )
            raise self.outcome(error) from exc


    def _stays(self) -> Partial | None:
        """What stays of the real step that just stopped, where DDL commits at once."""
        steps = None if self.dry_run else self._steps
        return None if steps is None or not steps.saved else steps.stays()

    def _failed_statement(self) -> dict[str, Any]:
        """Where DDL commits at once, the statement that failed: its number and first line."""
        steps = None if self.dry_run else self._steps
        if steps is None or steps.failed is None:
            return {}
        number, line = steps.failed
        return {"statement": number, "line": line}

    def _partly_done(self, migration: MigrationFile, cause: str) -> ReplyError | None:
        """Error 14 for a step that failed with statements of it in effect (DDL, committed
        at once where it cannot be rolled back), saying exactly which; None when nothing
        of it stays."""
        steps = self._steps
        stays = self._stays()
        if stays is None:
            return None
        if steps.undoing is not None:
            return self._undo_failed(migration, cause, stays)
        kept = steps.committed
        stay = "stays" if kept == 1 else "stay"
        failed = self._failed_statement()
        at = (f" at statement {failed['statement']} ({failed['line']!r})" if failed else "")
        if self.action == "apply":
            text = (f"migration {migration.version} {migration.name} failed{at}: {cause};"
                    f" {span(kept)} of it {stay} applied, because the database commits DDL at"
                    " once and cannot roll it back, so it is not recorded as applied: fix"
                    f" the file after statement {kept} and migrate again to go on at"
                    f" statement {kept + 1}, or repair the database by hand and send resolve")
        else:
            text = (f"rollback of migration {migration.version} {migration.name}"
                    f" failed{at}: {cause}; {span(kept)} of its down section ran and {stay},"
                    " because the database commits DDL at once, so it stays recorded as"
                    f" applied: fix the down section after statement {kept} and roll back"
                    f" again to go on at statement {kept + 1}, or repair the database by hand"
                    " and send resolve")
        log.error("%s", text)
        return ReplyError(
            MIGRATION_FAILED, text, **self._done_field(),
            failed=migration.entry(error=cause, **failed),
            partial=partial_field(stays),
        )

    def _undo_failed(self, migration: MigrationFile, cause: str, stays: Partial
                     ) -> ReplyError:
        """Error 14 for the undo of a partly applied migration that stopped partway."""
        failed = self._failed_statement()
        at = (f" at down statement {failed['statement']} ({failed['line']!r})"
              if failed else "")
        text = (f"undoing migration {migration.version} {migration.name} failed{at}: {cause};"
                f" {span(stays.done)} of its up section stay in effect, so it is not applied:"
                " roll back again to go on, or repair the database by hand and send resolve")
        log.error("%s", text)
        return ReplyError(MIGRATION_FAILED, text, **self._done_field(),
                          failed=migration.entry(error=cause, **failed),
                          partial=partial_field(stays))

    def _cancelled(self, migration: MigrationFile, started: bool) -> ReplyError:
        """Error 14 for a cancelled request: the steps done before, and the step that was
        interrupted and rolled back (or, cancelled between steps, the next one)."""
        name = f"{migration.version} {migration.name}"
        if not started:
            text = (f"cancelled before {_named(migration)} started; it and later ones did not"
                    " run")
        elif self.action == "apply":
            text = (f"cancelled: {_named(migration)} was interrupted and rolled back, so it is"
                    " not applied; no later migration started")
        else:
            text = (f"cancelled: the rollback of migration {name} was interrupted and rolled"
                    " back, so it stays applied; no later step started")
        log.warning("%s", text)
        error = ReplyError(MIGRATION_FAILED, text, cancelled=True, **self._done_field(),
                           failed=migration.entry(error="cancelled"))
        return self.outcome(error)

    def outcome(self, reply: Any) -> Any:
        """A reply body or ReplyError of this run, marked as a dry run's when it was one,
        with the locks its statements took when its store watched them (PostgreSQL)."""
        reply = _with_dry_run(reply, self.dry_run)
        locks = self._locks.report()
        if locks is None:
            return reply
        if isinstance(reply, ReplyError):
            reply.extra = {**reply.extra, "locks": locks}
            return reply
        return {**reply, "locks": locks}


def _undo_function(step: Step, partial: Partial) -> Callable[[Any], None]:
    """The code that undoes a partly applied .sql migration: the down statements that
    match its up statements in effect, one for one in reverse order (a down section of as
    many statements as its up, the last undoing the first), those of the latest first.

    Raises ReplyError 22, before anything runs, when they cannot be told: a .py file, a
    down section of another length, or up statements changed since they ran."""
    migration, loaded = step.migration, step.loaded
    name = f"migration {migration.version} {migration.name}"
    stays = (f"{span(partial.done)} of its up section {'is' if partial.done == 1 else 'are'}"
             " in effect")
    advice = ("undo them by hand, then send resolve with version"
              f" {migration.version} and applied false")
    up, down = loaded.up_statements, loaded.down_statements
    if up is None or down is None:
        what = ("it is a .py file, whose down() reverts the whole migration" if up is None
                else "it has no down section")
        raise ReplyError(PRECONDITION_FAILED, f"{name} stopped partway ({stays}), and {what},"
                         f" so which code undoes only those is not known; nothing ran: {advice}")
    if len(down) != len(up):
        raise ReplyError(PRECONDITION_FAILED, (
            f"{name} stopped partway ({stays}); its down section has {len(down)} statements"
            f" and its up section {len(up)}, so which down statements undo those is not known"
            " (they are matched one for one, the last down statement undoing the first up"
            f" statement); nothing ran: {advice}"))
    for number, statement in enumerate(up[: partial.done], 1):
        if checksum_of_statement(statement) != partial.checksums[number - 1]:
            raise ReplyError(PRECONDITION_FAILED, (
                f"{name} stopped partway ({stays}), and up statement {number} is not the one"
                f" that ran then (now: {first_line(statement)!r}), so its down statements may"
                f" not undo it; nothing ran: {advice}"))
    undo = down[len(down) - partial.done:]

    def run(db: Any) -> None:
        for statement in undo:
            db.execute(statement)

    return run


def _refuse_partials(partials: dict[int, Partial], to_run: set[int], dry_run: bool,
                     rollback: bool = False, taken: dict[str, Any] | None = None) -> None:
    """Error 22 before a migrate (`rollback`: a rollback) runs anything: a rollback that
    stopped partway is to be finished first (by a rollback), and a statement left
    uncertain by a worker's death, in a step to take, is for a person to look at. `taken`:
    the steps the request took before (a resend after its worker died), as fields."""
    for partial in partials.values():
        name = f"migration {partial.version} {partial.name}"
        part = "up" if partial.action == "apply" else "down"
        done = (f"{span(partial.done)} of its {part} section took effect"
                if partial.done else f"none of its {part} section took effect")
        if partial.running is not None and (partial.version in to_run or (
                partial.action != "apply" and not rollback)):
            text = (f"{name} stopped partway: {done}, and the worker died while"
                    f" statement {partial.running} ({partial.running_line!r}) ran, so it"
                    " may or may not have taken effect; nothing ran: look at the"
                    " database, finish or undo that migration by hand, then send"
                    f" resolve with version {partial.version} and applied true or false")
        elif partial.action == "rollback" and not rollback:
            text = (f"the rollback of {name} stopped partway ({done}), so nothing ran:"
                    " send rollback to go on with it, or repair the database by hand"
                    f" and send resolve with version {partial.version}")
        else:
            continue
        raise _with_dry_run(ReplyError(PRECONDITION_FAILED, text, **(taken or {}),
                                       partial={"version": partial.version,
                                                **partial_field(partial)}), dry_run)


def _reply_of(plain: bool, entries: list[Entry]) -> Reply:
    """A rollback's reply: the seed's shape for a plain one, the list for a series."""
    if plain:
        (only,) = entries
        return {"type": "migration_rolled_back", "version": only["version"],
                "name": only["name"]}
    return _rolled_back_reply(entries)


def _refusal(problems: list[Entry], undone: str = "applied") -> ReplyError:
    said = "; ".join(_problem_text(p) for p in problems)
    return ReplyError(
        PRECONDITION_FAILED,
        f"validation found problems, so nothing was {undone}: {said}",
        problems=problems,
    )


def _problem_text(problem: Entry) -> str:
    if problem["kind"] == SCHEMA_DRIFT:
        return (f"the schema is not the one recorded after the last step"
                f" ({'; '.join(problem['differences'])}; accept_drift takes it as it is)")
    return (f"migration {problem['version']} {problem['name']} is"
            f" {problem['kind'].replace('_', ' ')}")


def _with_dry_run(reply: Any, dry_run: bool) -> Any:
    """A reply body or ReplyError, marked as the outcome of a dry run when it was one."""
    if not dry_run:
        return reply
    if isinstance(reply, ReplyError):
        reply.extra = {**reply.extra, "dry_run": True}
        return reply
    return {**reply, "dry_run": True}


def _applied_reply(entries: list[Entry], repeatables: list[Entry] | None = None) -> Reply:
    """A migrate's reply; `repeatables` only for a folder that has some."""
    reply = {"type": "migrations_applied", "count": len(entries), "migrations": entries}
    if repeatables is not None:
        reply["repeatables"] = repeatables
    return reply


def _repeatable_entry(name: str, checksum: str) -> Entry:
    """A repeatable migration applied, as a migrate's `repeatables` lists it."""
    return {"name": name, "status": "applied", "checksum": checksum}


def _named(migration: MigrationFile) -> str:
    """How texts name a migration to apply: `migration 3 add_email`, `repeatable migration
    users_view`."""
    if isinstance(migration, Repeatable):
        return f"repeatable migration {migration.name}"
    return f"migration {migration.version} {migration.name}"


def _short(version: int | None, name: str) -> str:
    """A step in few words: `3 add_email`, `repeatable users_view`."""
    return f"repeatable {name}" if version is None else f"{version} {name}"


def _stored_version(migration: MigrationFile) -> int:
    """The version a history event of `migration` holds (see REPEATABLE_VERSION)."""
    return REPEATABLE_VERSION if isinstance(migration, Repeatable) else migration.version


def _rolled_back_reply(entries: list[Entry]) -> Reply:
    return {"type": "migrations_rolled_back", "count": len(entries), "migrations": entries}


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _describe(exc: BaseException) -> str:
    """The cause as people read it: `ValueError: boom`, `SystemExit: 78`, `SystemExit`."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
