"""Where a database's worker lives: endpoint, lock file and log file, all derived from --db.

Every spelling of one database file (relative, absolute, through a symlink) resolves to the
same real path, so every front node finds the same worker. A unix socket path holds about
100 bytes, so endpoints are named by a hash of the real path, inside a runtime directory
that only this user can enter.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import NamedTuple

from broker import database_url

try:
    # The built-in BLAKE2, as hashlib.blake2b, without hashlib's OpenSSL: loading that costs a
    # front node almost 4 MB of memory for this one hash.
    from _blake2 import blake2b
except ImportError:  # another Python implementation
    from hashlib import blake2b

RUNTIME_DIR_ENV = "MIGRATIONS_RUNTIME_DIR"
DEFAULT_TABLE = "schema_migrations"  # --table: the tracking table's name
# The tracking table's name, given no --table, where DEFAULT_TABLE is another tool's
# (golang-migrate's and dbmate's have that name too): `adopt` creates it, and a worker
# finds it in the database (see worker/stores/interface.py choose_table).
ALTERNATE_TABLE = "migrations_node"
MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


class Endpoint(NamedTuple):
    database: Path | str  # the real path of the SQLite file, or the URL without its secrets
    address: str  # the ZeroMQ address the worker binds and nodes connect to
    lock_path: Path  # held by the owning worker for its whole life
    log_path: Path  # stderr of workers spawned by a node
    journal_path: Path  # what the worker is running, read by the next worker after a crash
    target: str = ""  # the database itself, named by each request (database_url.target)


def runtime_dir() -> Path:
    """The per-user directory for sockets and worker logs, created 0700 if missing.

    Raises PermissionError if it exists but belongs to someone else or others can enter it.
    """
    configured = os.environ.get(RUNTIME_DIR_ENV)
    if configured:
        path = Path(configured)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "migrations-node"
    else:
        path = Path("/tmp") / f"migrations-node-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Raise PermissionError unless `path` is a real directory of this user's that nobody
    else can enter: whoever can reach a socket there can send the worker requests."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by this user")
    if info.st_mode & 0o077:
        raise PermissionError(f"{path} is open to other users (mode {info.st_mode & 0o777:o})")


def check_ipc_address(address: str) -> None:
    """Hold an ipc:// address given by hand to the checks of the default runtime directory.

    Raises PermissionError for an abstract socket (no file, so no permissions: any local
    user could connect) or one whose directory others can enter; FileNotFoundError if the
    directory does not exist.
    """
    path = address.removeprefix("ipc://")
    if path.startswith("@"):
        raise PermissionError(
            f"{address} is an abstract unix socket, which any local user can reach;"
            " use a path in a directory only you can enter"
        )
    check_private_dir(Path(os.path.abspath(path)).parent)


def for_database(database: str | os.PathLike[str]) -> Endpoint:
    """Where the worker of `database` (a SQLite file, or a PostgreSQL, MySQL or MariaDB
    URL) lives.

    Raises ValueError for a URL libpq would refuse (see database_url.resolve), or a MySQL
    URL mysql_url refuses (see mysql_url.resolve).
    """
    if database_url.is_url(str(database)):
        public, _ = database_url.split_secrets(str(database))
        # Named by where the driver connects, not by the spelling: one worker per database.
        target = database_url.target(public)
        key = blake2b(target.encode(), digest_size=12).hexdigest()
        # A server's worker keeps its local owner lock in the runtime directory.
        return _endpoint(public, key, runtime_dir() / f"{key}.lock")._replace(target=target)
    real = Path(os.path.realpath(database))
    key = blake2b(os.fsencode(real), digest_size=12).hexdigest()
    # As text that always packs, however the path's bytes read.
    target = os.fsencode(real).decode("utf-8", "backslashreplace")
    return _endpoint(real, key, lock_file(real))._replace(target=target)


def _endpoint(database: Path | str, key: str, lock_path: Path) -> Endpoint:
    directory = runtime_dir()
    socket_path = directory / f"{key}.sock"
    if len(os.fsencode(socket_path)) > MAX_UNIX_PATH:
        raise ValueError(f"socket path {socket_path} is too long; set {RUNTIME_DIR_ENV} shorter")
    return Endpoint(
        database=database,
        address=f"ipc://{socket_path}",
        lock_path=lock_path,
        log_path=directory / f"{key}.log",
        journal_path=directory / f"{key}.running",
    )


def lock_file(database: str | os.PathLike[str]) -> Path:
    """The file beside the database whose lock its owning worker holds."""
    real = Path(os.path.realpath(database))
    return real.with_name(real.name + ".lock")


class Owner(NamedTuple):
    """What the owning worker wrote into the lock file: who it is and what it serves."""

    pid: int | None
    migrations: str | None  # the real path of its migrations folder
    tracking: str | None  # its tracking table, see tracking_label
    address: str | None = None  # where it serves: nodes elsewhere are told how to reach it


def tracking_label(database: str, table: str, schema: str | None) -> str:
    """How a worker's tracking table is named in its lock file and in messages: `table` for
    a SQLite file, `schema.table` on PostgreSQL (schema `public` unless given),
    `database.table` on MySQL, whose databases are its schemas.

    Raises ValueError for a MySQL URL mysql_url refuses."""
    backend = database_url.backend_of(database)
    if backend == database_url.MYSQL:
        from broker import mysql_url

        return f"{mysql_url.resolve(database).database}.{table}"
    if backend is not None:
        return f"{schema or 'public'}.{table}"
    return table


def owner_note(pid: int, migrations: Path, tracking: str, address: str) -> bytes:
    """The lock file's contents for an owner: its pid, its migrations folder, its table,
    and the address it serves."""
    return os.fsencode(f"{pid}\n{migrations}\n{tracking}\n{address}\n")


def read_owner(lock_path: Path) -> Owner:
    """The owner a lock file names (fields None when absent or unreadable)."""
    try:
        with open(lock_path, "rb") as lock:
            lines = lock.read(8192).split(b"\n")
    except OSError:
        return Owner(None, None, None)
    pid = int(lines[0]) if lines[0].isdigit() else None
    folder = os.fsdecode(lines[1]) if len(lines) > 2 and lines[1] else None
    tracking = os.fsdecode(lines[2]) if len(lines) > 3 and lines[2] else None
    address = os.fsdecode(lines[3]) if len(lines) > 4 and lines[3] else None
    return Owner(pid, folder, tracking, address)


def is_listening(address: str) -> bool:
    """True if a worker is accepting connections at an ipc:// address right now.

    A unix socket either accepts or refuses at once, so this answers without waiting:
    a stale socket file left by a killed worker is refused.
    """
    if not address.startswith("ipc://"):
        raise ValueError(f"cannot probe {address}: only ipc:// endpoints are local")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(address.removeprefix("ipc://"))
    except OSError:
        return False
    finally:
        probe.close()
    return True
