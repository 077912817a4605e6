"""Another tool's applied times, written as the history writes its own: ISO 8601 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(value: object) -> str | None:
    """`value` as `2024-05-01T10:00:00.000Z`, or None when it is no time.

    A datetime with a zone is converted to UTC; one without (SQLite's text, written by
    `datetime('now')` and `strftime(..., 'now')`, which are UTC) is taken as UTC. Text is
    read as ISO 8601, a space or a T between date and time, any digits of a second (Go's
    time.Time as go-sqlite3 stores it has nanoseconds: `...05.698012358+00:00`).
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
