"""What the server stores (PostgreSQL, MariaDB) read of their tracking tables alike: both
run a statement with `_run()` and read with `_reading()`, which hands a read the tracking
tables that exist and tries once more when one was dropped by hand meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ServerRows:
    """Store methods written once for the stores whose statements live in `_sql`."""

    _sql: dict[str, str]
    tables: Any  # TrackingTables
    _run: Callable[..., Any]
    _reading: Callable[[Callable[[set[str]], Any]], Any]

    def schema_rows(self) -> tuple[int, list[str]]:
        def read(tables: set[str]) -> tuple[int, list[str]]:
            if self.tables.schemas not in tables:
                return 0, []
            (newest,) = self._run(self._sql["newest_schema"]).fetchone()
            return newest, [changes for (changes,) in self._run(self._sql["schema_rows"])]

        return self._reading(read)

    def newest_schema_seq(self) -> int:
        def read(tables: set[str]) -> int:
            if self.tables.schemas not in tables:
                return 0
            return self._run(self._sql["newest_schema"]).fetchone()[0]

        return self._reading(read)
