"""Turns on the owner's connection: the writer thread's while a write runs, lent to a read
between two of the write's transactions.

    writer thread:  writing() { ... transaction ... between() ... transaction ... }
    socket thread:  lend(wait_s) -> True once no write holds the connection (at once while
                    no write runs; else at the write's next between(), which waits until
                    the read is done), False after wait_s

Why lend it at all: a second connection reads the whole schema anew after another
connection's DDL (SQLite), a cost that grows with every table, where the owner's connection
has it already. Only the socket thread asks, so one read at most waits at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    def __init__(self) -> None:
        self._state = threading.Condition()
        self._writing = False  # a write runs and holds the connection
        self._reading = False  # a read holds it
        self._asking = False  # a read waits for it

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a write request, on the writer thread: the connection is the write's,
        once a read that holds it is done."""
        with self._state:
            self._state.wait_for(lambda: not self._reading)
            self._writing = True
        try:
            yield
        finally:
            with self._state:
                self._writing = False
                self._state.notify_all()

    def between(self) -> None:
        """On the writer thread, with no transaction open: a read waiting for the
        connection takes it now, and the write goes on once the read is done."""
        with self._state:
            if not self._asking:
                return
            self._writing = False
            self._state.notify_all()
            self._state.wait_for(lambda: not self._asking and not self._reading)
            self._writing = True

    @contextmanager
    def lend(self, wait_s: float) -> Iterator[bool]:
        """The connection for one read, if it comes within `wait_s`: True while it is the
        read's, False when it did not come (the write holds it still)."""
        with self._state:
            self._asking = True
            lent = self._state.wait_for(lambda: not self._writing, wait_s)
            self._asking = False
            self._reading = lent
            self._state.notify_all()  # a write in between() waits for the ask to end
        try:
            yield lent
        finally:
            if lent:
                with self._state:
                    self._reading = False
                    self._state.notify_all()
