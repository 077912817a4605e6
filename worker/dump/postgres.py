"""A PostgreSQL database's schema as the SQL that recreates it: pg_dump --schema-only.

    pg_dump --schema-only --no-owner --no-privileges --dbname=<the store's URL, no secrets>
        env PGPASSWORD (the worker's, or the URL's password)

Every schema of the database (the tracking tables' too, so that the rows recording the
applied versions have their table). pg_dump from 13.22, 14.19, 15.14, 16.10 and 17.6 on
brackets its output with psql's `\\restrict KEY` and `\\unrestrict KEY` lines, a random key
each time; they are taken out, so that a dump is plain SQL any client loads and an unchanged
schema gives the same text (as Rails and activerecord-clean-db-structure do).
"""

from __future__ import annotations

import os
import re

from broker import database_url
from worker.dump.tools import find_tool, run_tool

PACKAGE = "postgresql-client"
OPTIONS = ("--schema-only", "--no-owner", "--no-privileges")
_RESTRICT = re.compile(r"^\\(?:un)?restrict [A-Za-z0-9]+\n", re.MULTILINE)


def schema_sql(url: str) -> str:
    """pg_dump's schema-only SQL of the database at `url` (a libpq URL or key=value string).

    Raises error 22 when pg_dump is not on PATH (naming PACKAGE), or fails.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    tool = find_tool(("pg_dump",), PACKAGE)
    params = conninfo_to_dict(url)
    environment = {}
    password = params.pop("password", None) or os.environ.get("PGPASSWORD")
    if password:
        environment["PGPASSWORD"] = str(password)
    for option in database_url.SECRET_OPTIONS:  # never in an argv; libpq has no variable
        params.pop(option, None)                # for the others: without them, if it can
    text = run_tool([tool, *OPTIONS, f"--dbname={make_conninfo(**params)}"], environment)
    return _RESTRICT.sub("", text)


def literal(value: object) -> str:
    """A value as a PostgreSQL literal (standard_conforming_strings on, as pg_dump sets it)."""
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
