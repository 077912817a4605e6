"""What a person sees: lines, tables, colour, and a progress line on a terminal, with the
stdlib only.

Colour is used only on a terminal and never when NO_COLOR is set (https://no-color.org);
the progress line is drawn only when stderr is a terminal, so a pipe or a log file gets
plain lines and nothing else. Text the terminal's encoding cannot show is escaped
(`caf\\xe9`), and a reader that goes away early loses lines, not the command.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO, TextIO

COLOURS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}
CLEAR_LINE = "\r\x1b[K"


def escape_what_cannot_be_shown() -> None:
    """Have stdout and stderr write `\\xe9` for what their encoding cannot represent
    (PYTHONIOENCODING=ascii, a C locale's pipe) instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


class Lines:
    """A person's lines on stdout, each written at once; once the reader has gone (`| head`,
    `| true`), the rest are dropped and `lost` is True, so that the command can finish its
    work and say so on stderr instead of dying in the middle with a traceback."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lost = False

    def __call__(self, text: str) -> None:
        self._put(self.stream, text + "\n")

    def raw(self, data: bytes) -> None:
        """Bytes as they are (a JSON line written exactly as the stdio node writes it)."""
        self._put(self.stream.buffer, data)

    def _put(self, target: TextIO | BinaryIO, data: str | bytes) -> None:
        if self.lost:
            return
        try:
            target.write(data)
            target.flush()
        except BrokenPipeError:
            self.lost = True
            # What is still buffered, and the interpreter's flush at exit, go nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)


def wants_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


class Style:
    """Colours for one stream, or none; and text as that stream's encoding can show it."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = wants_colour(stream)
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def shown(self, text: str) -> str:
        """`text` as the stream writes it: escaped where its encoding cannot represent it
        (see escape_what_cannot_be_shown), so that a table measures what is written."""
        return text.encode(self.encoding, "backslashreplace").decode(self.encoding)

    def __call__(self, text: str, colour: str) -> str:
        if not self.enabled:
            return text
        return f"\x1b[{COLOURS[colour]}m{text}\x1b[0m"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style) -> str:
    """Rows under their headers, columns padded to their widest cell (colour codes aside:
    cells are padded before they are coloured, so pass (text, colour) pairs to colour)."""
    cells = [[style.shown(_text(cell)) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for column, cell in enumerate(row):
            widths[column] = max(widths[column], len(cell))
    header = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    lines = [style(header, "bold")]
    for raw, row in zip(rows, cells, strict=True):
        parts = []
        for column, cell in enumerate(row):
            padded = cell.ljust(widths[column])
            colour = raw[column][1] if isinstance(raw[column], tuple) else None
            parts.append(style(padded, colour) if colour else padded)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _text(cell: str | tuple[str, str]) -> str:
    return cell[0] if isinstance(cell, tuple) else cell


class ProgressLine:
    """`[n/N] doing what  elapsed 1.2 s` redrawn in place on stderr while a write runs;
    nothing at all when stderr is not a terminal.

    Used as a context manager: inside it, a log record clears the line before it is
    written (the next draw puts the line back below it), and on leaving the line is cleared.
    Anything else written to the terminal meanwhile goes through say() or after clear().
    """

    def __init__(self, stream: TextIO, total: int, verb: str) -> None:
        self.stream = stream
        self.enabled = stream.isatty() and total > 1
        self.total = total
        self.verb = verb
        self.done = 0
        self.current = ""
        self.started = time.monotonic()

    def step(self, done: int, following: str) -> None:
        """`done` steps are done; `following` is the one running now ("" when none)."""
        self.done, self.current = done, following
        self.draw()

    def draw(self) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        what = f" {self.verb} {self.current}" if self.current else ""
        self.stream.write(
            f"{CLEAR_LINE}[{self.done}/{self.total}]{what}  elapsed {elapsed:.1f} s"
        )
        self.stream.flush()

    def say(self, text: str) -> None:
        """A line of text on the stream, above the progress line."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        self.draw()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()

    def __enter__(self) -> ProgressLine:
        if self.enabled:
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._before_log)
        return self

    def __exit__(self, *_exc: object) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._before_log)
        self.clear()

    def _before_log(self, _record: logging.LogRecord) -> bool:
        self.clear()
        return True  # a filter that lets every record through, on a clean line
