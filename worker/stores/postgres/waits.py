"""Who blocks us: a watch on the worker's own session while migration code runs.

    writer thread                         watch thread (its own session)
    -------------                         ------------------------------
    with watch.watching(backend_pid):     every `interval` while watching:
        migration statements ...            SELECT the lock our backend waits for,
    watch.seen  (the last wait, if any)       and pg_blocking_pids() with their activity
                                          a wait that starts -> on_wait(LockWait)
    watch.current  (read by health)

A statement that waits for a lock is blocked inside the server, so the session that runs it
cannot say what it waits for: another session must look, while it waits. The watch polls
only while a migration runs, and only from `interval` after it began, so a migration that
takes no time costs a wake-up and nothing on the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from broker.cli.lock_table import mode_name

log = logging.getLogger(__name__)

QUERY_SHOWN_CHARS = 60  # of a blocking session's query, in texts and replies
MIN_INTERVAL_S = 0.02
MAX_INTERVAL_S = 0.25
# The lock our backend waits for (at most one: a backend waits for one lock at a time),
# the relation it is on (a row lock's wait is on the transaction holding the row, whose
# relation comes from the tuple lock our backend holds meanwhile), and who blocks it.
WAITING_FOR = f"""
SELECT CASE WHEN c.oid IS NULL THEN w.locktype
            ELSE format('%%I.%%I', n.nspname, c.relname) END,
       w.mode,
       (SELECT coalesce(json_agg(json_build_object(
                'pid', a.pid, 'user', a.usename, 'application', a.application_name,
                'state', a.state,
                'transaction_s', extract(epoch FROM clock_timestamp() - a.xact_start),
                'query_start', to_char(a.query_start AT TIME ZONE 'UTC',
                                       'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'query', left(a.query, {QUERY_SHOWN_CHARS})) ORDER BY a.pid), '[]'::json)
          FROM pg_catalog.pg_stat_activity a
         WHERE a.pid = ANY (pg_catalog.pg_blocking_pids(w.pid)))
  FROM pg_catalog.pg_locks w
  LEFT JOIN pg_catalog.pg_locks t
         ON w.locktype <> 'relation' AND t.pid = w.pid AND t.locktype = 'tuple'
  LEFT JOIN pg_catalog.pg_class c ON c.oid = coalesce(w.relation, t.relation)
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE w.pid = %s AND NOT w.granted
 LIMIT 1
"""


class Blocker(NamedTuple):
    """A session that holds what we wait for, as pg_stat_activity showed it."""

    pid: int
    user: str | None
    application: str | None
    state: str | None  # "idle in transaction", "active", ...
    transaction_s: float | None  # how long its transaction had been open
    query_start: str | None  # ISO 8601, UTC
    query: str | None  # its current or last query, cut to QUERY_SHOWN_CHARS

    def as_reply(self) -> dict[str, Any]:
        fields = self._asdict()
        fields["transaction_s"] = (None if self.transaction_s is None
                                   else round(self.transaction_s, 3))
        return fields

    def describe(self) -> str:
        """`pid 4242 idle in transaction for 12 s (query 'UPDATE ...')`"""
        text = f"pid {self.pid}"
        if self.state:
            text += f" {self.state}"
        if self.transaction_s is not None:
            text += f" for {self.transaction_s:.0f} s"
        if self.query:
            text += f" (query {self.query!r})"
        return text


class LockWait(NamedTuple):
    """What a statement of ours waits for, and who holds it."""

    relation: str  # schema-qualified, or the lock type when it is on no relation
    mode: str  # as pg_locks names it: AccessExclusiveLock
    blockers: tuple[Blocker, ...]
    since: float  # time.monotonic() when the watch first saw this wait

    def describe(self) -> str:
        """`ACCESS EXCLUSIVE on public.accounts: pid 4242 idle in transaction for 12 s`"""
        who = "; ".join(blocker.describe() for blocker in self.blockers)
        return f"{mode_name(self.mode)} on {self.relation}: {who or 'no blocker seen'}"

    def as_reply(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "relation": self.relation,
            "mode": self.mode,
            "waiting_s": round(now - self.since, 3),
            "blockers": [blocker.as_reply() for blocker in self.blockers],
        }

    def same_as(self, other: LockWait | None) -> bool:
        """The same wait seen again (its blockers may have changed)."""
        return other is not None and (other.relation, other.mode) == (self.relation, self.mode)


class LockWaitWatch:
    """A thread with its own session that watches one backend while asked to.

    `connect` opens that session (autocommit); it is opened at the first watch, and again
    after a failure. A failure to look is logged and the watch goes on without: it only
    informs, it never stops a migration.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        on_wait: Callable[[LockWait], None] | None = None,
    ) -> None:
        self._connect = connect
        self.on_wait = on_wait  # called from the watch thread when a wait starts
        self._lock = threading.Condition()
        self._backend_pid: int | None = None  # the backend watched now, if any
        self._interval = MAX_INTERVAL_S
        self._generation = 0  # one per watching(); a look of an older one is dropped
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self.current: LockWait | None = None  # the wait going on now (health reads it)
        self.seen: LockWait | None = None  # the last wait of the current watch

    @contextmanager
    def watching(self, backend_pid: int, lock_timeout_s: float) -> Iterator[None]:
        """Watch `backend_pid` while the block runs: several looks per lock timeout (0:
        none), at most MAX_INTERVAL_S apart. `seen` is cleared at the start."""
        interval = MAX_INTERVAL_S if lock_timeout_s <= 0 else lock_timeout_s / 4
        with self._lock:
            self._generation += 1
            self._backend_pid = backend_pid
            self._interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, interval))
            self.current = self.seen = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lock-watch",
                                                daemon=True)
                self._thread.start()
            self._lock.notify()
        try:
            yield
        finally:
            with self._lock:
                self._generation += 1
                self._backend_pid = None
                self.current = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._backend_pid is None:
                    self._lock.wait()
                generation = self._generation
                # The first look comes one interval in: most migrations are done by then.
                self._lock.wait(self._interval)
                if generation != self._generation or self._backend_pid is None:
                    continue
                pid = self._backend_pid
            wait = self._look(pid)
            with self._lock:
                if generation != self._generation:
                    continue
                starts = wait is not None and not wait.same_as(self.current)
                if wait is not None and not starts and self.current is not None:
                    wait = wait._replace(since=self.current.since)
                self.current = wait
                if wait is not None:
                    self.seen = wait
            if starts and self.on_wait is not None:
                try:
                    self.on_wait(wait)
                except Exception:
                    log.exception("telling of a lock wait failed")

    def _look(self, pid: int) -> LockWait | None:
        try:
            if self._connection is None or self._connection.closed:
                self._connection = self._connect()
            row = self._connection.execute(WAITING_FOR, (pid,)).fetchone()
        except Exception as exc:
            log.warning("cannot see what the migration waits for: %s", exc)
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            return None
        if row is None:
            return None
        relation, mode, blockers = row
        return LockWait(relation, mode, tuple(_blocker(b) for b in blockers or ()),
                        time.monotonic())

    def close(self) -> None:
        """Close the watch's session (the daemon thread ends with the process)."""
        with self._lock:
            self._backend_pid = None
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _blocker(fields: dict[str, Any]) -> Blocker:
    return Blocker(
        int(fields["pid"]), fields.get("user"), fields.get("application"),
        fields.get("state"),
        None if fields.get("transaction_s") is None else float(fields["transaction_s"]),
        fields.get("query_start"), fields.get("query"),
    )
