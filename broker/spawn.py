"""Keeping a worker process alive for a database: spawn it detached, reap it, back off.

The worker gets no stdin, no stdout and its own session, so the node's caller sees EOF on
the node's output as soon as the node exits, while the worker lives on for the next node
until it has been idle for a few seconds. Its stderr goes to a log file in the runtime
directory; a node shows the lines a failed worker wrote there.

Death is learnt from the process itself: the child's pidfd becomes readable the moment it
exits, so the caller can poll it beside its sockets instead of guessing from silence.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from broker import database_url, endpoint
from broker.exits import EXIT_CONFIG, EXIT_OWNED
from broker.files import open_private

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IDLE_EXIT_S = 3.0  # a spawned worker leaves this long after its last node has gone...
IDLE_EXIT_ENV = "MIGRATIONS_IDLE_EXIT_S"  # ... unless this says how many seconds instead
FIRST_BACKOFF_S = 0.1  # after the second death in a row, restarts wait, doubling each time
MAX_BACKOFF_S = 5.0
OWNER_GRACE_S = 1.0  # after losing the lock race, how long to wait for the winner to listen
# How worker/__main__.py logs why it exits with EXIT_CONFIG, after "worker[PID] ".
START_REFUSAL = "ERROR worker: cannot start: "


class WorkerSettings(NamedTuple):
    """What a node tells the worker it spawns, besides the database (python -m worker --help)."""

    migrations: Path  # the real path of the migrations folder
    # The tracking table; None: the worker finds it in the database (the default, or
    # endpoint.ALTERNATE_TABLE where another tool's table has the default's name).
    table: str | None = None
    schema: str | None = None  # PostgreSQL: the tracking tables' schema (None: public)
    owner_wait_s: float | None = None  # PostgreSQL: how long a write waits for another owner
    wal: bool = False  # SQLite: turn an existing rollback-journal database into WAL
    # PostgreSQL: how long a migration's statement waits for a lock (None: the URL's, else
    # the worker's default), and how many more tries a migration gets after such a wait.
    lock_timeout_s: float | None = None
    lock_retries: int | None = None

    def argv(self) -> list[str]:
        args = ["--migrations", str(self.migrations)]
        if self.table is not None:
            args += ["--table", self.table]
        if self.schema is not None:
            args += ["--schema", self.schema]
        if self.owner_wait_s is not None:
            args += ["--owner-wait", str(self.owner_wait_s)]
        if self.wal:
            args.append("--wal")
        if self.lock_timeout_s is not None:
            args += ["--lock-timeout", repr(self.lock_timeout_s)]
        if self.lock_retries is not None:
            args += ["--lock-retries", str(self.lock_retries)]
        return args


class WorkerConfigError(Exception):
    """The worker refuses to start with this configuration; restarting would not help."""


class WorkerSupervisor:
    def __init__(
        self,
        where: endpoint.Endpoint,
        settings: WorkerSettings,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.where = where
        self.settings = settings
        # A server's password and other secrets (database_url.split_secrets), for the
        # worker's environment, never its argv.
        self.secrets = secrets
        self.spawned = 0
        self.sentinel: int | None = None  # pidfd of our live child, readable once it exits
        self._child: subprocess.Popen[bytes] | None = None
        self._failures = 0  # workers of ours that died in a row without a reply between
        self._failing_since: float | None = None
        self._next_spawn = 0.0
        self._log_offset = 0  # where the log ended when we last spawned
        self._spawned_at = 0.0
        self._owned_elsewhere = False  # our last worker found another owner, not reachable

    def ensure(self) -> None:
        """Spawn a worker unless one is listening, starting, or we are backing off.

        Raises WorkerConfigError if our worker exited because it cannot start at all.
        """
        if self._child is not None and not self.reap():
            return  # ours is alive: starting, or serving and about to be connected to
        if endpoint.is_listening(self.where.address):
            self._check_owner()
            return
        if time.monotonic() < self._next_spawn:
            return
        self._log_offset = log_size(self.where)
        self._spawned_at = time.monotonic()
        self._child = spawn_worker(self.where, self.settings, self.secrets)
        self.sentinel = _pidfd(self._child.pid)
        self.spawned += 1
        log.info("started worker pid %d for %s", self._child.pid, self.where.database)

    def _check_owner(self) -> None:
        """Raise WorkerConfigError if the running worker serves another migrations folder or
        tracking table: one database has one worker, and requests from here would run that
        folder's files, or read and write that table."""
        owner = endpoint.read_owner(self.where.lock_path)
        worker = f"the worker of {self.where.database} (pid {owner.pid})"
        folder = str(self.settings.migrations)
        if owner.migrations is not None and owner.migrations != folder:
            raise WorkerConfigError(
                f"{worker} serves the migrations in {owner.migrations}, not {folder}:"
                " stop it, or use that folder"
            )
        given = self.settings.table
        # Given no table, either name a worker may have found in the database will do.
        names = [given] if given else [endpoint.DEFAULT_TABLE, endpoint.ALTERNATE_TABLE]
        labels = [endpoint.tracking_label(str(self.where.database), name, self.settings.schema)
                  for name in names]
        if owner.tracking is not None and owner.tracking not in labels:
            raise WorkerConfigError(
                f"{worker} tracks migrations in the table {owner.tracking}, not {labels[0]}:"
                " stop it, or use that table"
            )

    def _failed(self, code: int) -> None:
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        # The first restart is immediate: a kill must cost no more than a restart.
        pause = 0.0
        if self._failures > 1:
            pause = min(FIRST_BACKOFF_S * 2 ** (self._failures - 2), MAX_BACKOFF_S)
        self._next_spawn = time.monotonic() + pause
        log.warning("worker exited with status %s; restarting in %.1f s", code, pause)

    def answered(self) -> None:
        """A worker replied: whatever failed before is over."""
        self._failures = 0
        self._failing_since = None
        self._owned_elsewhere = False

    def unreachable_owner(self) -> str | None:
        """Why no worker answers, when the database's owner is one this node cannot reach:
        its pid, where it serves, and how to reach it; None otherwise."""
        if not self._owned_elsewhere:
            return None
        owner = endpoint.read_owner(self.where.lock_path)
        ours = self.where.address
        if owner.address is None or owner.address == ours:
            where = f"which has not answered at {ours}"
            how = "stop it, or wait until it serves"
        else:
            where = f"which serves {owner.address}, not {ours} where this node looks"
            how = (f"reach it with --connect {owner.address}, or give this node the owner's"
                   f" runtime directory ({endpoint.RUNTIME_DIR_ENV} or XDG_RUNTIME_DIR differ,"
                   " as they do under cron, sudo and login shells)")
        pid = owner.pid if owner.pid is not None else "unknown"
        return f"{self.where.database} is owned by worker pid {pid}, {where}: {how}"

    def restart_clock(self) -> None:
        """The waiting requests were answered: the next ones get a full GIVE_UP_S of their own."""
        self._failing_since = None

    def failing_for(self) -> float:
        """Seconds since workers started dying without answering (0 when they are not)."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    def last_words(self) -> str:
        return log_since(self.where, self._log_offset)

    def reap(self) -> bool:
        """True if no child of ours runs (any that exited is reaped); false while one runs.

        Raises WorkerConfigError if it exited because it cannot start at all.
        """
        if self._child is None:
            return True
        code = self._child.poll()
        if code is None:
            return False
        pid = self._child.pid
        self._child = None
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None
        if code == EXIT_CONFIG:
            raise WorkerConfigError(start_refusal(self.where, self._log_offset, pid)
                                    or self.last_words() or f"it exited with status {code}")
        if code == EXIT_OWNED:
            # Another node's worker won the lock and is about to bind: give it time. One
            # that never binds where we look (another runtime directory, --bind) counts as
            # failing from our first attempt, so that requests are answered in GIVE_UP_S.
            self._next_spawn = time.monotonic() + OWNER_GRACE_S
            self._owned_elsewhere = True
            if self._failing_since is None:
                self._failing_since = self._spawned_at
        else:
            self._failed(code)
        return True


def owning_pid(where: endpoint.Endpoint) -> int | None:
    """The pid of the worker that holds the database's owner lock now, or None.

    Asked of the lock itself (a pid in the file may be a dead worker's, and then another
    process's): a lock we can take for an instant has no owner.
    """
    try:
        fd = os.open(where.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no worker ever owned it here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return endpoint.read_owner(where.lock_path).pid
    finally:
        os.close(fd)  # drops our lock, if we took it
    return None


def stop_owner(where: endpoint.Endpoint, waiting: Callable[[int], None]) -> int | None:
    """Stop the worker that owns the database, as SIGTERM does (its migration in progress
    finishes; writes queued behind it are left to the next worker), and return its pid
    once it has exited; None when no worker owns the database. `waiting(pid)` is called
    once if it has not exited within a second (a migration still runs)."""
    pid = owning_pid(where)
    if pid is None:
        return None
    exited = _pidfd(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    try:
        if exited is None:  # no pidfd: ask the lock, which the kernel drops at its exit
            while owning_pid(where) == pid:
                time.sleep(0.05)
            return pid
        if not select.select([exited], [], [], 1.0)[0]:
            waiting(pid)
            select.select([exited], [], [])
    finally:
        if exited is not None:
            os.close(exited)
    return pid


def spawn_worker(
    where: endpoint.Endpoint, settings: WorkerSettings, secrets: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a detached worker for `where`; a server's secrets (option name -> value, see
    database_url.split_secrets) travel in its environment (see worker_environment), where
    other users cannot read them, never in its argv (see worker_command)."""
    import subprocess  # only a node that starts a worker pays for it

    env = worker_environment(where, secrets)
    command = worker_command(where, settings)
    log_fd = open_private(where.log_path, os.O_WRONLY | os.O_APPEND, "worker log",
                          in_private_folder=True)
    with os.fdopen(log_fd, "ab") as log_file:
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,  # so `-m worker` finds this project's worker package
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=env,
            start_new_session=True,
        )


def worker_command(where: endpoint.Endpoint, settings: WorkerSettings) -> list[str]:
    """The argv of a worker for `where`: its database as where.database names it (a URL
    without its secrets)."""
    return [
        sys.executable,
        "-m",
        "worker",
        "--db",
        str(where.database),
        *settings.argv(),
        "--idle-exit",
        str(idle_exit_s()),
    ]


def worker_environment(
    where: endpoint.Endpoint, secrets: Mapping[str, str] | None
) -> dict[str, str] | None:
    """The environment of a worker for `where`: this process's (None) when there are no
    secrets, else this process's with the secrets in the variables its driver reads them
    from (database_url.secrets_environment: PGPASSWORD and SECRET_ENVIRONMENT's others for
    PostgreSQL, MYSQL_PWD for MySQL)."""
    if not secrets:
        return None
    return {**os.environ, **database_url.secrets_environment(secrets, str(where.database))}


def idle_exit_s() -> float:
    """How long a spawned worker outlives its last node: IDLE_EXIT_ENV, else IDLE_EXIT_S."""
    configured = os.environ.get(IDLE_EXIT_ENV)
    if configured:
        try:
            seconds = float(configured)
        except ValueError:
            seconds = -1.0
        if seconds > 0:  # 0 would let a worker leave before its first node connects
            return seconds
        log.warning("ignoring %s=%r: not a positive number of seconds", IDLE_EXIT_ENV, configured)
    return IDLE_EXIT_S


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3: ticks will do
        return None


def log_size(where: endpoint.Endpoint) -> int:
    """Where the log ends now, so that log_since() shows only what a new worker wrote."""
    try:
        return os.path.getsize(where.log_path)
    except OSError:
        return 0


def start_refusal(where: endpoint.Endpoint, offset: int, pid: int) -> str:
    """Why worker `pid` would not start, as it logged it after `offset`: the reason alone,
    one sentence, without the log line's time, pid and level ("" if it logged none)."""
    tag = f"worker[{pid}] {START_REFUSAL}"
    try:
        with open(where.log_path, errors="replace") as log_file:
            log_file.seek(offset)
            reasons = [line.split(tag, 1)[1].strip() for line in log_file if tag in line]
    except OSError:
        return ""
    return reasons[-1] if reasons else ""


def log_since(where: endpoint.Endpoint, offset: int, lines: int = 3) -> str:
    """The last lines logged after `offset`, for a node's own error message."""
    try:
        with open(where.log_path, errors="replace") as log_file:
            log_file.seek(offset)
            return "".join(deque(log_file, maxlen=lines)).strip()
    except OSError:
        return ""
