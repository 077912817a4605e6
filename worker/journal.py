"""A record of what the worker is running and of what killed earlier workers, per request.

Before each migration runs, the worker writes one record to a small file, and clears its
`running` part when the request is answered:

    {"running": {"request": "<hex id>", "what": "migration 2 x"} | null,
     "deaths": {"<hex id>": [deaths, "what was running"], ...}}

A worker that finds `running` set at start-up knows its predecessor died running that
request: it adds one death to that request's count and at once rewrites the record with
`running` null, so a death at start-up, before anything runs, is not blamed on it again.
Counts of several requests are kept, so requests of several nodes that take turns killing
workers each reach MAX_DEATHS; such a request is then answered with error 13 instead of being
run again, and a migration that calls os._exit(), segfaults or exhausts memory cannot make
the worker restart forever.

The record is bounded in bytes whatever the names: at most MAX_REQUESTS counts, each `what`
cut to MAX_WHAT_BYTES, so it always fits RECORD_BYTES (checked at import). The file lives in
the runtime directory and is not fsynced: it guards against process deaths, which leave the
page cache intact, not against power cuts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from broker.codec import MAX_REQUEST_ID_BYTES
from broker.files import open_private

log = logging.getLogger(__name__)

MAX_DEATHS = 3  # deaths while running one request before it is refused
MAX_REQUESTS = 8  # death counts kept; beyond, the request whose last death is oldest is dropped
MAX_WHAT_BYTES = 256  # of "what is running", as encoded in the record (UTF-8, JSON escapes)
RECORD_BYTES = 4096  # every record is padded to this size, so a shorter one overwrites it whole


class CrashJournal:
    """The crash record of one database, in a file the worker keeps open for its whole life.

    Raises OSError if the file cannot be opened, or is a symbolic link.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # request id -> (deaths, what ran), the request whose last death is oldest first
        self._deaths: dict[bytes, tuple[int, str]] = {}
        self._running: tuple[bytes, str] | None = None
        # Opened once and overwritten in place: one pwrite per migration, no open or
        # truncate, which cost more than a migration's own statements on some filesystems.
        self._fd = open_private(path, os.O_RDWR, "crash journal", in_private_folder=True)
        raw = os.pread(self._fd, RECORD_BYTES, 0)
        record = raw.strip()
        # A file shorter than a record (a new one) is written whole now, so that every later
        # record overwrites blocks the file has: a full disk stops the worker at start-up,
        # with the reason, never in the middle of a request.
        whole = len(raw) == RECORD_BYTES
        self._on_disk: bytes | None = (record or _encode(None, {})) if whole else None  # unknown
        try:
            if record:
                died_running = self._load(json.loads(record.decode()))
                if died_running is not None:
                    self._count_death(*died_running)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("ignoring an unreadable crash journal %s: %s", path, exc)
            self._deaths.clear()
            self._on_disk = None
        self._write()  # with nothing running, unless the file says just that already

    def deaths(self, request_id: bytes) -> tuple[int, str]:
        """How often running this request killed a worker, and what it was running then."""
        return self._deaths.get(request_id, (0, ""))

    def running(self, request_id: bytes, what: str) -> None:
        """Note that `what` is about to run for this request: one write of the record.

        Raises ValueError for a request id longer than MAX_REQUEST_ID_BYTES.
        """
        if len(request_id) > MAX_REQUEST_ID_BYTES:
            raise ValueError(f"a request id of {len(request_id)} bytes is too long to note")
        self._running = (request_id, _cut(what))
        self._write()

    def finished(self, request_id: bytes) -> None:
        """The request is answered: its count is forgotten and nothing is running any more.

        Writes only if that changes the record, so a request that ran nothing costs no write.
        """
        self._deaths.pop(request_id, None)
        self._running = None
        self._write()

    def close(self) -> None:
        """Close the file; the record stays as last written."""
        os.close(self._fd)

    def _load(self, note: Any) -> tuple[bytes, str] | None:
        """Take the counts of a parsed record; returns what it says was running, if anything.

        Raises ValueError, KeyError, TypeError, AttributeError or RecursionError for a record
        of another shape.
        """
        for key, (deaths, what) in note["deaths"].items():
            request_id, deaths = _request_id(key), int(deaths)
            if deaths > 0:
                # Counts never pass MAX_DEATHS, since the request is then refused, never run.
                self._deaths[request_id] = (min(deaths, MAX_DEATHS), _cut(str(what)))
        # The file was written by an older worker or by hand: keep the newest counts only.
        while len(self._deaths) > MAX_REQUESTS:
            del self._deaths[next(iter(self._deaths))]
        running = note["running"]
        if running is None:
            return None
        return _request_id(running["request"]), _cut(str(running["what"]))

    def _count_death(self, request_id: bytes, what: str) -> None:
        deaths = min(self.deaths(request_id)[0] + 1, MAX_DEATHS)
        self._deaths.pop(request_id, None)
        self._deaths[request_id] = (deaths, what)
        while len(self._deaths) > MAX_REQUESTS:
            del self._deaths[next(iter(self._deaths))]
        log.warning(
            "the previous worker died running %s (death %d of request %s)",
            what,
            deaths,
            request_id.hex(),
        )

    def _write(self) -> None:
        record = _encode(self._running, self._deaths)
        if record == self._on_disk:
            return
        os.pwrite(self._fd, record.ljust(RECORD_BYTES), 0)
        self._on_disk = record


class NoJournal(CrashJournal):
    """For an engine used in-process (tests, tools): remembers nothing."""

    def __init__(self) -> None:
        self._deaths = {}

    def running(self, request_id: bytes, what: str) -> None:
        pass

    def finished(self, request_id: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _encode(running: tuple[bytes, str] | None, deaths: dict[bytes, tuple[int, str]]) -> bytes:
    note = {
        "running": None if running is None else {"request": running[0].hex(), "what": running[1]},
        "deaths": {key.hex(): [count, what] for key, (count, what) in deaths.items()},
    }
    # ensure_ascii=False: an é costs its 2 UTF-8 bytes, not the 6 of "\u00e9".
    return json.dumps(note, ensure_ascii=False, separators=(",", ":")).encode()


def _request_id(text: Any) -> bytes:
    request_id = bytes.fromhex(text)
    if len(request_id) > MAX_REQUEST_ID_BYTES:
        raise ValueError(f"a request id of {len(request_id)} bytes")
    return request_id


def _cut(what: str) -> str:
    """`what` with lone surrogates replaced, cut at a character to MAX_WHAT_BYTES as encoded."""
    # Undecodable file names reach us as lone surrogates, which UTF-8 cannot encode.
    text = what.encode(errors="replace").decode()
    if len(json.dumps(text, ensure_ascii=False).encode()) - 2 <= MAX_WHAT_BYTES:
        return text  # the usual case, on the hot path: one dumps, not one per character
    size = 0
    for index, char in enumerate(text):
        # Costs add up per character: ensure_ascii=False escapes each one on its own.
        size += len(json.dumps(char, ensure_ascii=False).encode()) - 2
        if size > MAX_WHAT_BYTES:
            return text[:index]
    return text


def _largest_record() -> bytes:
    """A record at its largest: every field as long as the limits allow, in bytes."""
    longest_id = b"\xff" * MAX_REQUEST_ID_BYTES
    longest_what = "x" * MAX_WHAT_BYTES
    deaths = {
        index.to_bytes(MAX_REQUEST_ID_BYTES, "big"): (MAX_DEATHS, longest_what)
        for index in range(MAX_REQUESTS)
    }
    return _encode((longest_id, longest_what), deaths)


# Each field's encoded length is at most its length in _largest_record(), and lengths add up,
# so no record is longer: 9 x (128 hex + 256 what + < 30 syntax) = about 3.7 kB.
if len(_largest_record()) > RECORD_BYTES:
    raise RuntimeError(f"a crash record can exceed RECORD_BYTES ({RECORD_BYTES})")
