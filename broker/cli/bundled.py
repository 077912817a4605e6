"""Where the bundled example migrations are."""

from __future__ import annotations

from pathlib import Path


def bundled_migrations() -> Path:
    """The folder of the bundled example migrations (a source checkout's migrations/)."""
    return Path(__file__).resolve().parents[2] / "migrations"
