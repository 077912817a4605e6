"""The migration engine: plan and run migrate, rollback and status against a store.

Pure logic: no sockets, no processes. Each handler takes the request id and returns the
reply body (without in_reply_to), or raises ReplyError. A request id that already has a
stored reply gets that reply again and nothing runs twice, which makes resending a request
after a worker crash safe.

    migrate(R):   for each pending migration, in version order, one transaction:
                  BEGIN IMMEDIATE; up(db); record(version, by R); [store reply]; COMMIT
    rollback(R):  one transaction: BEGIN IMMEDIATE; down(db); unrecord; store reply; COMMIT
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from broker.errors import (
    CRASH,
    MIGRATION_FAILED,
    PRECONDITION_FAILED,
    TEMPORARILY_UNAVAILABLE,
    ReplyError,
)
from worker.catalog import Catalog, Migration
from worker.journal import MAX_DEATHS, CrashJournal, NoJournal
from worker.migration_db import guarded
from worker.store import AppliedMigration, SqliteStore

log = logging.getLogger(__name__)

Reply = dict[str, Any]
# What migration code may raise and still be only a failed migration: sys.exit() and a
# KeyboardInterrupt raised by hand must not take the worker down (a real SIGINT only sets the
# stop flag, so it never arrives as KeyboardInterrupt).
MIGRATION_ERRORS = (Exception, SystemExit, KeyboardInterrupt)


class StatusStamp(NamedTuple):
    """What a status reply depends on: the folder listing and the database's contents."""

    folder_generation: int
    commits: int  # by this worker's store
    data_version: int  # moves when another program commits


class Interrupted(Exception):
    """The worker was asked to stop between two migrations; the request gets no reply here."""


class Engine:
    def __init__(
        self,
        store: SqliteStore,
        catalog: Catalog,
        should_stop: Callable[[], bool] = lambda: False,
        journal: CrashJournal | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.should_stop = should_stop
        self.journal = journal if journal is not None else NoJournal()
        self._status: Reply = {}
        self._status_stamp = StatusStamp(-1, -1, -1)  # what the kept reply was computed from
        self._status_checked = False  # the stamp was checked in the current batch

    # -- request handlers ------------------------------------------------------------------

    def status(self, request_id: bytes) -> Reply:
        """Every migration, file or recorded, in version order, with whether it is applied.

        The reply is kept while neither the folder nor the database changes, and the same
        object is returned. This store's own commits are counted; the folder and other
        programs' commits (data_version, which costs a file lock) are checked once per batch
        of requests received together: those are concurrent, so one snapshot answers them all.
        """
        if not self._status_checked or self._status_stamp.commits != self.store.commits:
            migrations = self.catalog.migrations()
            stamp = StatusStamp(
                self.catalog.generation, self.store.commits, self.store.data_version()
            )
            if stamp != self._status_stamp:
                self._status = self._compute_status(migrations)
                self._status_stamp = stamp
            self._status_checked = True
        return self._status

    def new_batch(self) -> None:
        """Requests received from here on may see changes made since the last batch."""
        self._status_checked = False

    def _compute_status(self, migrations: list[Migration]) -> Reply:
        applied = {row.version: row for row in self.store.applied()}
        files = {migration.version: migration for migration in migrations}
        entries = []
        for version in sorted(files.keys() | applied.keys()):
            # An applied migration whose file is gone is still listed, under its recorded name.
            name = files[version].name if version in files else applied[version].name
            entries.append({"version": version, "name": name, "applied": version in applied})
        return {"type": "migration_status", "migrations": entries}

    def migrate(self, request_id: bytes) -> Reply:
        """Apply every pending migration in version order, each in its own transaction."""
        return self._once(request_id, self._migrate)

    def rollback(self, request_id: bytes) -> Reply:
        """Revert the most recently applied migration and delete its record, atomically."""
        return self._once(request_id, self._rollback)

    # -- implementation --------------------------------------------------------------------

    def _once(self, request_id: bytes, action: Callable[[bytes], Reply]) -> Reply:
        stored = self.store.stored_reply(request_id)
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
            return action(request_id)
        except ReplyError as error:
            if error.code != TEMPORARILY_UNAVAILABLE:
                self._store_error(request_id, error)
            raise
        finally:
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

    def _migrate(self, request_id: bytes) -> Reply:
        applied = self.store.applied()
        done_versions = {row.version for row in applied}
        # Migrations this same request applied before a crash are part of its answer.
        done = [
            {"version": row.version, "name": row.name, "status": "applied"}
            for row in applied
            if row.request_id == request_id
        ]
        pending = [m for m in self.catalog.migrations() if m.version not in done_versions]
        last_seq = max((row.applied_seq for row in applied), default=0)
        for index, migration in enumerate(pending):
            if self.should_stop():
                raise Interrupted(f"stopped before migration {migration.version}")
            entry = migration.entry(status="applied")
            self.journal.running(request_id, f"migration {migration.version} {migration.name}")
            try:
                module, checksum = migration.load()
                up = _function(module, "up")
                if up is None:
                    raise LookupError("the file defines no up(db) function")
                with self.store.transaction():
                    elapsed_ms = self._run(up)
                    self.store.record(
                        migration.version,
                        migration.name,
                        checksum,
                        elapsed_ms,
                        last_seq + index + 1,
                        request_id,
                    )
                    if index == len(pending) - 1:
                        reply = _applied_reply([*done, entry])
                        self.store.store_reply(request_id, reply)
            except ReplyError as error:
                if error.code == TEMPORARILY_UNAVAILABLE and done:
                    # Those before it committed: say so, a retry (a new request) will not list them.
                    error.extra = {"applied": done, **error.extra}
                raise
            except MIGRATION_ERRORS as exc:
                cause = _describe(exc)
                log.error("migration %s %s failed: %s", migration.version, migration.name, cause)
                raise ReplyError(
                    MIGRATION_FAILED,
                    f"migration {migration.version} {migration.name} failed and was rolled back,"
                    f" so it is not applied: {cause}",
                    applied=done,
                    failed=migration.entry(error=cause),
                ) from exc
            log.info("applied %s %s in %.1f ms", migration.version, migration.name, elapsed_ms)
            done.append(entry)
        return _applied_reply(done)

    def _rollback(self, request_id: bytes) -> Reply:
        applied = self.store.applied()
        if not applied:
            raise ReplyError(PRECONDITION_FAILED, "nothing to roll back: no migration is applied")
        latest = max(applied, key=lambda row: row.applied_seq)
        migration = self._file_of(latest)
        self.journal.running(
            request_id, f"the rollback of migration {latest.version} {latest.name}"
        )
        try:
            module, _ = migration.load()
        except MIGRATION_ERRORS as exc:
            raise self._down_failed(latest, exc) from exc
        down = _function(module, "down")
        if down is None:
            raise ReplyError(
                PRECONDITION_FAILED,
                f"migration {latest.version} {latest.name} has no down() function,"
                " so it cannot be rolled back",
            )
        reply = {"type": "migration_rolled_back", "version": latest.version, "name": latest.name}
        try:
            with self.store.transaction():
                elapsed_ms = self._run(down)
                self.store.unrecord(latest.version)
                self.store.store_reply(request_id, reply)
        except ReplyError:
            raise
        except MIGRATION_ERRORS as exc:
            raise self._down_failed(latest, exc) from exc
        log.info("rolled back %s %s in %.1f ms", latest.version, latest.name, elapsed_ms)
        return reply

    def _file_of(self, row: AppliedMigration) -> Migration:
        for migration in self.catalog.migrations():
            if migration.version == row.version:
                return migration
        raise ReplyError(
            PRECONDITION_FAILED,
            f"migration {row.version} {row.name} is applied but its file is missing,"
            " so it cannot be rolled back",
        )

    def _down_failed(self, row: AppliedMigration, exc: BaseException) -> ReplyError:
        cause = _describe(exc)
        log.error("rollback of %s %s failed: %s", row.version, row.name, cause)
        return ReplyError(
            MIGRATION_FAILED,
            f"rollback of migration {row.version} {row.name} failed, so it stays applied"
            f" and unchanged: {cause}",
            failed={"version": row.version, "name": row.name, "error": cause},
        )

    def _run(self, function: Callable[[Any], object]) -> float:
        """Call up() or down() with a guarded db; return its duration in milliseconds.

        Raises RuntimeError if the migration ended the transaction itself.
        """
        connection = self.store.connection
        started = time.perf_counter()
        with guarded(connection) as db:
            function(db)
        if not connection.in_transaction:
            raise RuntimeError("the migration ended the transaction itself")
        return (time.perf_counter() - started) * 1000


def _applied_reply(entries: list[dict[str, Any]]) -> Reply:
    return {"type": "migrations_applied", "count": len(entries), "migrations": entries}


def _function(module: object, name: str) -> Callable[[Any], object] | None:
    function = getattr(module, name, None)
    return function if callable(function) else None


def _describe(exc: BaseException) -> str:
    """The cause as people read it: `ValueError: boom`, `SystemExit: 78`, `SystemExit`."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
