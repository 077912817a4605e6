"""SIGTERM and SIGINT as a request to stop, for the worker and the front node alike.

Both install the handlers first thing in main(), before the worker takes its owner lock or
binds a socket and before the node starts a worker, so a stop at any instant after that is
a clean exit instead of the signal's default action or an exception raised wherever the
program happened to be. The handler only sets a flag that the loops read, and counts the
signals (the node cancels its writes on the first and stops at once on the second), except
inside `interruptible()`, where it raises `Stopped` to end a blocking wait (the owner lock with
--wait) that would otherwise resume after the handler.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """A stop arrived during a blocking wait."""


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the latest signal, for an exit status 128 + it
        self.count = 0  # signals received: a second one means "now", not "when done"
        self._raise = False

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.requested = True
        self.signum = signum
        self.count += 1
        if self._raise:
            raise Stopped(signal.Signals(signum).name)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Run a blocking call that a stop ends at once by raising Stopped."""
        self._raise = True
        try:
            if self.requested:
                raise Stopped("stop requested before the wait")
            yield
        finally:
            self._raise = False
