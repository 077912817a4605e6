"""PostgreSQL URLs given as --db, read as libpq reads them: telling one from a file path,
and keeping the secrets out.

    --db URL --split_secrets()--+--> the URL without its secrets: the worker's argv, logs, health
                                +--> the secrets, decoded: the worker's environment

A URL is read by libpq's own rules (its Connection URIs, section 34.1.1.2, and
conninfo_uri_parse_options in fe-connect.c), with the standard library only, so that a node
never loads a driver: the userinfo ends at the first `@` before any `/`, the hosts are a
comma-separated list (IPv6 in brackets), every part and every query parameter is
percent-decoded exactly once (`+` is a plus sign, not a space), a query parameter overrides
the same part of the URL, and `ssl=true` is `sslmode=require`.

Secrets (libpq's password-like options) never reach the worker's argv (readable by every
user in /proc), a log line, `health` or an error text: `split_secrets()` cuts them out of the
text, leaving every other byte as written, and the node hands them, decoded, to the worker in
its environment: the password as PGPASSWORD (read by libpq itself), the others, which libpq
reads from no variable, as SECRET_ENVIRONMENT names them (the worker passes them on).
`identity()` is what names the worker's endpoint: the same server, port, database and user,
however the URL is spelt, give the same worker.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes, urlsplit

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432
# libpq's options shown as "*" (password fields) by PQconndefaults, and the SCRAM keys of
# libpq 18, each as good as a password; -> the variable the worker finds it in.
SECRET_ENVIRONMENT = {
    "password": "PGPASSWORD",
    "sslpassword": "MIGRATIONS_PGSSLPASSWORD",
    "oauth_client_secret": "MIGRATIONS_PGOAUTHCLIENTSECRET",
    "scram_client_key": "MIGRATIONS_PGSCRAMCLIENTKEY",
    "scram_server_key": "MIGRATIONS_PGSCRAMSERVERKEY",
}
SECRET_OPTIONS = tuple(SECRET_ENVIRONMENT)

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def is_url(database: str) -> bool:
    """True for a PostgreSQL URL (postgresql://..., postgres://...), false for a file path."""
    return database.partition("://")[0] in SCHEMES and "://" in database


def split_secrets(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its secrets, and the secrets (option name -> decoded value).

    The secrets are the password of the userinfo (`user:password@`) and every query
    parameter SECRET_OPTIONS names (however its name is percent-encoded); the last one
    given wins, as in libpq. Every other byte of the URL stays as it was written.

    Raises ValueError for a URL libpq would refuse to parse; its text never quotes the URL.
    """
    return _parse(url)[1:]


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """split_secrets() by the name node.py calls it: every secret, not the password alone."""
    return split_secrets(url)


def secrets_environment(secrets: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that hand `secrets` to a worker."""
    return {SECRET_ENVIRONMENT[option]: value for option, value in secrets.items()}


def secrets_to_pass(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The secrets in `environ` that the worker must give libpq itself (all but PGPASSWORD,
    which libpq reads on its own), as connection options."""
    return {
        option: environ[variable]
        for option, variable in SECRET_ENVIRONMENT.items()
        if option != "password" and environ.get(variable)
    }


def identity(url: str) -> str:
    """postgresql://user@host:port/dbname, with libpq's defaults filled in (no password)."""
    parts = urlsplit(url)
    user = parts.username or os.environ.get("PGUSER") or getpass.getuser()
    host = (parts.hostname or os.environ.get("PGHOST") or "").lower()  # "": the local socket
    port = parts.port or int(os.environ.get("PGPORT") or DEFAULT_PORT)
    dbname = parts.path.lstrip("/") or os.environ.get("PGDATABASE") or user
    return f"postgresql://{user}@{host}:{port}/{dbname}"


# -- libpq's reading of a URL --------------------------------------------------------------


def _parse(url: str) -> tuple[dict[str, str], str, dict[str, str]]:
    """(every option the URL gives, decoded; the URL without secrets; the secrets)."""
    scheme = next((f"{name}://" for name in SCHEMES if url.startswith(f"{name}://")), None)
    if scheme is None:
        raise ValueError("a PostgreSQL URL begins with postgresql:// or postgres://")
    params: dict[str, str] = {}
    secrets: dict[str, str] = {}
    end = len(url)
    start = p = len(scheme)
    public = url[:start]
    at = _find_any(url, "@/", start)
    if at < end and url[at] == "@":  # user[:password]@, up to the first @ before any /
        colon = url.find(":", start, at)
        if colon == -1:
            colon = at
        if colon > start:
            params["user"] = _decode(url[start:colon])
        if at > colon + 1:
            secrets["password"] = _decode(url[colon + 1:at])
        public += url[start:colon] + "@"
        p = at + 1
    hosts_start = p
    hosts, ports = [], []
    while True:
        if p < end and url[p] == "[":
            close = url.find("]", p + 1)
            if close == -1 or close == p + 1:
                raise ValueError("the PostgreSQL URL has an unclosed or empty [IPv6 address]")
            hosts.append(url[p + 1:close])
            p = close + 1
            if p < end and url[p] not in ":/?,":
                raise ValueError("the PostgreSQL URL has a character after an [IPv6 address]")
        else:
            stop = _find_any(url, ":/?,", p)
            hosts.append(url[p:stop])
            p = stop
        port = ""
        if p < end and url[p] == ":":
            stop = _find_any(url, "/?,", p + 1)
            port, p = url[p + 1:stop], stop
        ports.append(port)
        if p >= end or url[p] != ",":
            break
        p += 1
    if any(hosts) or len(hosts) > 1:
        params["host"] = _decode(",".join(hosts))
    if any(ports) or len(ports) > 1:
        params["port"] = _decode(",".join(ports))
    if p < end and url[p] == "/":
        stop = _find_any(url, "?", p + 1)
        if stop > p + 1:  # an empty path leaves dbname to PGDATABASE, as libpq does
            params["dbname"] = _decode(url[p + 1:stop])
        p = stop
    public += url[hosts_start:p]
    kept = []
    if p < end:  # url[p] == "?"
        for pair in url[p + 1:].split("&") if p + 1 < end else []:
            key, equals, value = pair.partition("=")
            if not equals:
                raise ValueError("a query parameter of the PostgreSQL URL has no '='")
            if "=" in value:
                raise ValueError("a query parameter of the PostgreSQL URL has a second '='")
            key, value = _decode(key), _decode(value)
            if key == "ssl" and value == "true":  # libpq's nod to JDBC
                key, value = "sslmode", "require"
            elif key == "requiressl":
                key, value = "sslmode", "require" if value.startswith("1") else "prefer"
            if key in SECRET_ENVIRONMENT:
                secrets[key] = value
                continue
            params[key] = value
            kept.append(pair)
    if kept:
        public += "?" + "&".join(kept)
    return params, public, secrets


def _find_any(text: str, stops: str, start: int) -> int:
    """The index of the first of `stops` in text[start:], or len(text)."""
    for index in range(start, len(text)):
        if text[index] in stops:
            return index
    return len(text)


def _decode(text: str) -> str:
    """libpq's conninfo_uri_decode: %XX escapes become bytes; spaces around a part are
    dropped and one inside it is refused (libpq 18; older ones kept them)."""
    text, _, after = text.lstrip(" ").partition(" ")
    if after.strip(" "):
        raise ValueError("the PostgreSQL URL has a space inside a part: write it as %20")
    if _BAD_ESCAPE.search(text):
        raise ValueError("the PostgreSQL URL has an invalid percent-encoded token")
    raw = unquote_to_bytes(os.fsencode(text))
    if b"\x00" in raw:
        raise ValueError("the PostgreSQL URL has a forbidden %00")
    return os.fsdecode(raw)
