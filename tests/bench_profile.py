"""Where an apply's time goes, item by item: the worker's engine and SQLite store applying N
generated migrations in this process, as the worker has them (WAL, synchronous = FULL, the
crash journal, the log written to a file beside the database), whole and then with one
piece of the per-migration work taken out at a time, all in turns with the plain loop.

`tests/benchmark.py` (group `profile`) turns the samples into figures: what each piece
costs a migration is the whole apply's time less the time without it. Taking a piece out
breaks a guarantee (that is why it is there), so this runs only here, never in a worker,
and each apply still checks that all N were applied. In this process, not through a node:
the request's round trip (a few milliseconds for the whole apply) is left out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from tests.bench_peers import py_migration
from worker.__main__ import configure_logging
from worker.catalog import Catalog
from worker.engine import Engine
from worker.journal import CrashJournal
from worker.stores.interface import Store
from worker.stores.sqlite.store import SqliteStore

WHOLE = "the whole apply"


@contextlib.contextmanager
def _no_schema_record() -> Iterator[None]:
    with (mock.patch.object(Store, "record_schema", lambda self, since=None: None),
          mock.patch.object(SqliteStore, "schema_mark", lambda self: None)):
        yield


@contextlib.contextmanager
def _no_log_line() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


# Each piece of a migration's own work, and how to take it out.
PIECES: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "the schema record (catalog read, fingerprint, row)": _no_schema_record,
    "the history row": lambda: mock.patch.object(SqliteStore, "record_event",
                                                 lambda self, event: None),
    "the crash journal's note": lambda: mock.patch.object(CrashJournal, "running",
                                                          lambda self, request, what: None),
    "the log line": _no_log_line,
}


def write_migrations(folder: Path, count: int) -> None:
    """`count` .py migrations, each creating one table (as the benchmark's), dated a minute
    back (a listing younger than 2 s is not cached)."""
    folder.mkdir()
    for version in range(1, count + 1):
        (folder / f"{version:05d}_t{version}.py").write_text(py_migration(version))
    os.utime(folder, (time.time() - 60,) * 2)


def apply_seconds(count: int, without: str | None = None) -> float:
    """One in-process apply of `count` on a new WAL database, `without` one of PIECES."""
    root = Path(tempfile.mkdtemp(prefix="migrations-profile-"))
    logger = logging.getLogger()
    handlers = list(logger.handlers)
    store = None
    try:
        folder = root / "migrations"
        write_migrations(folder, count)
        os.sync()  # writing the files is set-up, as in the benchmark's applies
        logger.handlers.clear()
        with open(root / "worker.log", "a") as log_file, \
                mock.patch("sys.stderr", log_file):
            configure_logging("INFO")
            store = SqliteStore(root / "db.sqlite")
            store.acquire_owner(b"profile")
            engine = Engine(store, Catalog(folder), journal=CrashJournal(root / "journal"))
            with PIECES[without]() if without else contextlib.nullcontext():
                started = time.perf_counter()
                reply = engine.migrate(b"profile")
                seconds = time.perf_counter() - started
        assert reply.get("count") == count, str(reply)[:300]
        return seconds
    finally:
        logger.handlers[:] = handlers
        if store is not None:
            store.close()
        shutil.rmtree(root)
