"""A note of what the worker is running, so the next worker knows what killed the last one.

Before each migration runs, the worker writes (request id, migration, deaths so far) to a
small file, and blanks it when the request is answered. A worker that finds the file at
start-up knows its predecessor died running that migration. A request that has killed the
worker MAX_DEATHS times is answered with error 13 instead of being run again, so a migration
that calls os._exit(), segfaults or exhausts memory cannot make the worker restart forever.

The file lives in the runtime directory and is not fsynced: it guards against process
deaths, which leave the page cache intact, not against power cuts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_DEATHS = 3  # deaths while running one request before it is refused
RECORD_BYTES = 512  # every note is padded to this size, so a shorter one overwrites it whole
MAX_WHAT = 300  # characters of "what is running" kept, so a note fits its record


class CrashJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._deaths: dict[bytes, tuple[int, str]] = {}  # request id -> (deaths, what ran)
        # Opened once and overwritten in place: one pwrite per migration, no open or
        # truncate, which cost more than a migration's own statements on some filesystems.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._clean = False
        text = os.pread(self._fd, RECORD_BYTES, 0).decode(errors="replace").strip()
        if not text:
            self._clean = True
            return
        try:
            note = json.loads(text)
            request_id = bytes.fromhex(note["request"])
            deaths = int(note["deaths"]) + 1
            self._deaths[request_id] = (deaths, str(note["running"]))
            log.warning(
                "the previous worker died running %s (death %d of request %s)",
                note["running"],
                deaths,
                note["request"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable crash journal %s: %s", path, exc)

    def deaths(self, request_id: bytes) -> tuple[int, str]:
        """How often running this request killed a worker, and what it was running."""
        return self._deaths.get(request_id, (0, ""))

    def running(self, request_id: bytes, what: str) -> None:
        """Note that `what` is about to run for this request."""
        deaths, _ = self.deaths(request_id)
        note = {"request": request_id.hex(), "running": what[:MAX_WHAT], "deaths": deaths}
        self._write(json.dumps(note).encode())
        self._clean = False

    def finished(self, request_id: bytes) -> None:
        """The request is answered: nothing is running any more."""
        self._deaths.pop(request_id, None)
        if not self._clean:
            self._write(b"")
            self._clean = True

    def _write(self, record: bytes) -> None:
        os.pwrite(self._fd, record.ljust(RECORD_BYTES), 0)


class NoJournal(CrashJournal):
    """For an engine used in-process (tests, tools): remembers nothing."""

    def __init__(self) -> None:
        self._deaths = {}

    def running(self, request_id: bytes, what: str) -> None:
        pass

    def finished(self, request_id: bytes) -> None:
        pass
