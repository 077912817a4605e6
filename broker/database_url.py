"""PostgreSQL URLs given as --db: telling one from a file path, and keeping the password out.

A URL's password must never reach the worker's argv (readable by every user in /proc), a log
line, `health` or an error text: `split_password()` takes it out, the node hands it to the
worker in the environment (PGPASSWORD, which libpq reads), and everything else uses the URL
without it. `identity()` is what names the worker's endpoint: the same server, port, database
and user, however the URL is spelt, give the same worker.
"""

from __future__ import annotations

import getpass
import os
from urllib.parse import parse_qsl, urlencode, urlsplit

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432


def is_url(database: str) -> bool:
    """True for a PostgreSQL URL (postgresql://..., postgres://...), false for a file path."""
    return database.partition("://")[0] in SCHEMES and "://" in database


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password (in the netloc or a `password=` parameter), and the
    password (None when it had none)."""
    parts = urlsplit(url)
    password = parts.password
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in query if key != "password"]
    if len(kept) != len(query):
        password = dict(query)["password"]
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hostport}"
    # Built by hand: urlunsplit drops the empty host of postgresql:///dbname (the socket).
    query_text = f"?{urlencode(kept)}" if kept else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query_text}", password


def identity(url: str) -> str:
    """postgresql://user@host:port/dbname, with libpq's defaults filled in (no password)."""
    parts = urlsplit(url)
    user = parts.username or os.environ.get("PGUSER") or getpass.getuser()
    host = (parts.hostname or os.environ.get("PGHOST") or "").lower()  # "": the local socket
    port = parts.port or int(os.environ.get("PGPORT") or DEFAULT_PORT)
    dbname = parts.path.lstrip("/") or os.environ.get("PGDATABASE") or user
    return f"postgresql://{user}@{host}:{port}/{dbname}"
