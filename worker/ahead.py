"""Reading, hashing and compiling the next migration file while the step before it commits.

A step spends most of its time in COMMIT, waiting for the disk (or the server) with the GIL
released; reading a file, hashing its bytes and compiling them (Migration.prepare: no code
of the file runs) costs about a third as much again in Python. So the engine hands the next
step to a thread of its own right before each COMMIT, and the step takes what was prepared
for it. Handed any earlier, the thread would take the GIL at the step's short statements
and keep the step waiting for it; during the COMMIT it waits for nobody.

The bytes hashed are the bytes compiled, recorded and run: a file edited meanwhile is taken
as it was when read, as if the edit came a moment after the step. A file that fails to
prepare fails its own step, with the error prepare() raised, when that step is taken.

A plain thread and a queue, not concurrent.futures, whose import costs the first migrate
more than a hundred steps gain.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from typing import Any

from worker.catalog import Loaded

_STOP = object()  # what the preparing thread is given instead of a next step


class Ahead:
    """The steps of one series, in order: prepare_next() hands the step after the last one
    handed (or taken) to the thread, load() takes a step; close() when the series ends,
    however it ends."""

    def __init__(self, migrations: Iterable[Any]) -> None:
        self._prepared: queue.SimpleQueue[tuple[Any, BaseException | None]] = (
            queue.SimpleQueue())  # in the order the steps were handed to the thread
        self._turns: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting = iter(migrations)  # not handed to the thread, nor taken, yet
        self._handed: Any = None  # handed to the thread and not taken yet
        self._closed = False
        threading.Thread(target=self._prepare, name="prepare-ahead", daemon=True).start()

    def load(self, migration: Any) -> Loaded:
        """The step's Loaded, from what was prepared for it, or loaded here and now when
        nothing was (the first step); raises what preparing it raised."""
        if self._handed is not migration:
            # Nothing prepared for it: the first step. Any other is out of order (never, in
            # a series), and nothing more is prepared.
            if self._handed is not None or next(self._waiting, _STOP) is not migration:
                self.close()
            return migration.load()
        self._handed = None
        prepared, error = self._prepared.get()
        if error is not None:
            raise error
        return migration.load(prepared)

    def prepare_next(self) -> None:
        """Have the next step prepared now, unless it already is being (a step tried
        again after a lock timeout commits twice)."""
        if self._handed is not None or self._closed:
            return
        migration = next(self._waiting, _STOP)
        if migration is not _STOP:
            self._handed = migration
            self._turns.put(migration)

    def close(self) -> None:
        """Stop preparing; what was prepared and not taken is dropped."""
        if not self._closed:
            self._closed = True
            self._turns.put(_STOP)

    def _prepare(self) -> None:
        while (migration := self._turns.get()) is not _STOP:
            try:
                self._prepared.put((migration.prepare(), None))
            except Exception as exc:  # the step's own error, raised when it is taken
                self._prepared.put((None, exc))
