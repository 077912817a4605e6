"""Cut a byte stream into JSON request objects.

Requests arrive on stdin in chunks that may end anywhere. ``RequestFramer.feed`` returns, in
stream order, a dict for each complete request and a ``Malformed`` item for each piece of input
that cannot be one. The rules:

* Only ``{`` starts a request. Other text between requests yields one ``Malformed`` and the rest
  of its line is skipped. Whitespace between requests yields nothing.
* A request ends where its brackets balance (``{``/``[`` against ``}``/``]``, counted outside
  strings). Usually that is one line, but pretty-printed requests over several lines and
  several requests on one line work too. The bytes are then decoded as strict JSON (UTF-8, no
  NaN or Infinity); a failure yields one ``Malformed``.
* A line that ends inside a string ends the open request as malformed (JSON strings cannot hold
  a raw newline). A ``{`` that cannot be a nested value (it does not follow ``:``, ``[`` or
  ``,``) also ends the open request as malformed, and starts a new one. Both catch a truncated
  request followed by a good one.
* A request larger than ``MAX_REQUEST_BYTES`` is reported once, then scanned to its end without
  being stored, so memory stays bounded whatever the input.
* ``close()`` reports a request still open at end of input.

A complete line holding exactly one valid object takes a fast path (one JSON decode). Everything
else goes through a scanner that jumps between significant bytes with regexes. The fast path is
only a shortcut: it accepts exactly what the scanner would, so chunk boundaries never change
the result.
"""

import json
import re
from typing import NamedTuple

MAX_REQUEST_BYTES = 1 << 20  # 1 MiB

_NEWLINE = ord("\n")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")
_OPEN_BRACE = ord("{")
_CLOSE_BRACE = ord("}")
_CLOSE_BRACKET = ord("]")
# A nested object is a value, and values follow one of these bytes.
_BEFORE_NESTED_VALUE = frozenset(b":[,")

_BLANKS = re.compile(rb"[ \t\r\n]*")
_INLINE_BLANKS = re.compile(rb"[ \t\r]*")
# Inside a request, outside strings: bytes that change no state, and strings that close on the
# same line, skipped in one step. Possessive quantifiers keep an unclosed string from
# backtracking.
_PLAIN_BYTES_AND_STRINGS = re.compile(rb'(?:[^"{}\[\]]++|"(?:[^"\\\n]++|\\[^\n])*+")*+')
_SIGNIFICANT_INSIDE_STRING = re.compile(rb'["\\\n]')
_BLANK = b" \t\r\n"

_NOT_AN_OBJECT = "text before a request is not a JSON object"
_TOO_LARGE = "request is larger than 1 MiB"
_NOT_UTF8 = "request is not valid UTF-8"
_TOO_DEEP = "request is nested too deeply to decode"
_INCOMPLETE = "request is incomplete at end of input"
_STRING_AT_END_OF_LINE = "request ends inside a string at end of line"
_CUT_OFF = "request is incomplete: a new request starts before it ends"


class Malformed(NamedTuple):
    """A piece of input that is not a valid request; ``text`` says why."""

    text: str


def _reject_constant(name: str) -> None:
    # json accepts NaN and Infinity by default, but they are not JSON.
    raise ValueError(f"{name} is not a valid JSON number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_request(raw: bytes | bytearray) -> dict | Malformed:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Malformed(_NOT_UTF8)
    try:
        request = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        return Malformed(
            f"request is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        )
    except ValueError as error:
        return Malformed(f"request is not valid JSON: {error}")
    except RecursionError:
        return Malformed(_TOO_DEEP)
    except Exception as error:  # the framer must never raise, whatever the input
        return Malformed(f"request could not be decoded: {error}")
    if not isinstance(request, dict):
        return Malformed("request is not a JSON object")
    return request


def _decode_whole_line(data: bytes, start: int, newline: int) -> dict | None:
    """Fast path: the request if data[start:newline] is exactly one valid object, else None."""
    if data[start] != _OPEN_BRACE or newline - start > MAX_REQUEST_BYTES:
        return None
    line = data[start:newline].rstrip(b" \t\r")
    if line[-1] != _CLOSE_BRACE:
        return None
    try:
        request, end = _DECODER.raw_decode(line.decode("utf-8"))
    except Exception:  # the scanner will say what is wrong
        return None
    if end != len(line) or not isinstance(request, dict):
        return None
    return request


def _last_non_blank(data: bytes, start: int, stop: int, default: int) -> int:
    """The last non-blank byte of data[start:stop], or ``default`` if there is none."""
    # Look at a short tail first so that a long stretch of plain bytes is rarely copied.
    tail_start = max(start, stop - 32)
    tail = data[tail_start:stop].rstrip(_BLANK) or data[start:tail_start].rstrip(_BLANK)
    return tail[-1] if tail else default


class RequestFramer:
    """Turns chunks of a byte stream into request dicts and ``Malformed`` items."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._object = bytearray()  # bytes of the open request from earlier chunks
        self._depth = 0  # open brackets of the current request; 0 means between requests
        self._in_string = False
        self._escape_pending = False  # a chunk ended just after a backslash inside a string
        self._last_significant = _OPEN_BRACE  # last non-blank byte outside strings in the request
        self._oversized = False  # open request already reported as too large; not stored
        self._skipping_line = False  # discarding the rest of a line of junk
        self._at_line_start = True  # only whitespace since the last newline: fast path allowed

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a request that is still open (never more than MAX_REQUEST_BYTES)."""
        return len(self._object)

    def feed(self, data: bytes) -> list[dict | Malformed]:
        """Consume the next chunk; return the requests and malformed items it completes."""
        data = bytes(data)
        items: list[dict | Malformed] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._at_line_start and self._depth == 0 and not self._skipping_line:
                if data[pos] != _OPEN_BRACE:  # skip blank lines and indentation
                    pos = _BLANKS.match(data, pos).end()
                newline = data.find(b"\n", pos)
                if newline >= 0:
                    request = _decode_whole_line(data, pos, newline)
                    if request is not None:
                        items.append(request)
                        pos = newline + 1
                        continue
            pos = self._scan(data, pos, end, items)
        return items

    def close(self) -> list[dict | Malformed]:
        """Signal end of input; return what it completes. The framer is then ready for reuse."""
        items: list[dict | Malformed] = []
        if self._depth > 0 and not self._oversized:
            items.append(Malformed(_INCOMPLETE))
        self._reset()
        return items

    def _scan(self, data: bytes, pos: int, end: int, items: list[dict | Malformed]) -> int:
        """Advance over data[pos:end] byte by significant byte.

        Returns after a newline between requests (so ``feed`` can try the fast path on the next
        line) or at ``end``. A request still open at ``end`` is kept for the next chunk.
        """
        object_start = pos  # where the open request's bytes begin in this chunk
        while pos < end:
            if self._skipping_line:
                newline = data.find(b"\n", pos, end)
                if newline < 0:
                    return end
                self._skipping_line = False
                self._at_line_start = True
                return newline + 1

            if self._depth == 0:
                pos = _INLINE_BLANKS.match(data, pos, end).end()
                if pos == end:
                    return end
                if data[pos] == _NEWLINE:
                    self._at_line_start = True
                    return pos + 1
                self._at_line_start = False
                if data[pos] != _OPEN_BRACE:
                    items.append(Malformed(_NOT_AN_OBJECT))
                    self._skipping_line = True
                    continue
                object_start = pos
                self._begin_object()
                pos += 1
                continue

            if self._in_string:
                if self._escape_pending:
                    self._escape_pending = False
                    newline = pos
                else:
                    match = _SIGNIFICANT_INSIDE_STRING.search(data, pos, end)
                    if match is None:
                        pos = end
                        break
                    found = match.start()
                    byte = data[found]
                    if byte == _QUOTE:
                        self._in_string = False
                        pos = found + 1
                        continue
                    if byte == _BACKSLASH:
                        if found + 1 == end:  # the escaped byte is in the next chunk
                            self._escape_pending = True
                            pos = end
                            break
                        newline = found + 1
                    else:
                        newline = found
                if data[newline] != _NEWLINE:  # an escaped byte other than newline
                    pos = newline + 1
                    continue
                # JSON strings cannot hold a raw newline: the request was cut short.
                self._finish_object(data, object_start, newline, items, _STRING_AT_END_OF_LINE)
                self._at_line_start = True
                return newline + 1

            found = _PLAIN_BYTES_AND_STRINGS.match(data, pos, end).end()
            if found == end:
                self._last_significant = _last_non_blank(data, pos, end, self._last_significant)
                pos = end
                break
            byte = data[found]  # a bracket, or a quote opening a string that goes on
            if byte == _OPEN_BRACE and (
                _last_non_blank(data, pos, found, self._last_significant)
                not in _BEFORE_NESTED_VALUE
            ):
                # E.g. `{"a": 1` then `{"b": 2}` on the next line: the first was cut short.
                self._finish_object(data, object_start, found, items, _CUT_OFF)
                object_start = found
                self._begin_object()
            elif byte in (_CLOSE_BRACE, _CLOSE_BRACKET):
                self._depth -= 1
                if self._depth == 0:
                    self._finish_object(data, object_start, found + 1, items, None)
                self._last_significant = byte
            else:  # a quote, `[` or a nested `{`
                if byte == _QUOTE:
                    self._in_string = True
                else:
                    self._depth += 1
                self._last_significant = byte
            pos = found + 1

        if self._depth > 0:
            self._keep(data, object_start, end, items)
        return end

    def _begin_object(self) -> None:
        self._object = bytearray()
        self._depth = 1
        self._in_string = False
        self._escape_pending = False
        self._last_significant = _OPEN_BRACE
        self._oversized = False

    def _keep(self, data: bytes, start: int, stop: int, items: list[dict | Malformed]) -> None:
        """Store data[start:stop] for the open request, unless that makes it too large."""
        if self._oversized:
            return
        if len(self._object) + stop - start > MAX_REQUEST_BYTES:
            items.append(Malformed(_TOO_LARGE))
            self._oversized = True
            self._object = bytearray()
        else:
            self._object += memoryview(data)[start:stop]

    def _finish_object(
        self,
        data: bytes,
        start: int,
        stop: int,
        items: list[dict | Malformed],
        problem: str | None,
    ) -> None:
        """End the open request, whose last bytes are data[start:stop]: report it and reset.

        ``problem`` says why it is malformed, or is None if it closed normally.
        """
        if not self._oversized:  # an oversized request was reported when it grew too large
            if len(self._object) + stop - start > MAX_REQUEST_BYTES:
                items.append(Malformed(_TOO_LARGE))
            elif problem is not None:
                items.append(Malformed(problem))
            elif self._object:
                items.append(_decode_request(self._object + data[start:stop]))
            else:
                items.append(_decode_request(data[start:stop]))
        self._object = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape_pending = False
        self._oversized = False
