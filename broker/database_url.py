"""Database URLs given as --db: which server's (backend_of), and PostgreSQL's read as libpq
reads them: the secrets out, the target named.

    --db URL --split_secrets()--+--> the URL without its secrets: the worker's argv, logs, health
                                +--> the secrets, decoded: the worker's environment
    the URL --target()------------> postgresql://user@host:port,.../dbname?options=...
                                    names the worker's endpoint (broker/endpoint.py), and is
                                    what the worker checks its sessions against

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

This module is the one place that tells a URL's kind: is_url, split_secrets,
secrets_environment, target and resolve take a MySQL or MariaDB URL too and hand it to
broker/mysql_url.py (loaded only then: other nodes never pay for it), whose reading follows
the same vocabulary.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, unquote_to_bytes

if TYPE_CHECKING:
    from broker import mysql_url

POSTGRESQL = "postgresql"  # what backend_of says of a URL
MYSQL = "mysql"  # MySQL and MariaDB alike
SCHEMES = ("postgresql", "postgres")
MYSQL_SCHEMES = ("mysql", "mariadb")
DEFAULT_PORT = 5432  # libpq's compiled-in DEF_PGPORT, the same in every build we know of
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

# Where libpq looks for a connection's target when the URL does not say (section 34.15).
TARGET_ENVIRONMENT = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
# Options that change neither the server, nor the database, nor what a session does with a
# migration's unqualified names: how to connect, encrypt, authenticate and be shown. Every
# other option (options, replication, service, any this list does not know) is part of the
# target, so that two URLs libpq might read differently never share a worker.
NEUTRAL_OPTIONS = frozenset({
    "application_name", "fallback_application_name", "connect_timeout", "client_encoding",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "passfile", "channel_binding", "require_auth", "requirepeer",
    "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslcertmode",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "sslkeylogfile",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
    "max_protocol_version", "gssencmode", "krbsrvname", "gsslib", "gssdelegation",
    "oauth_issuer", "oauth_client_id", "oauth_scope", *SECRET_OPTIONS,
})
# Options that pick among several hosts: part of the target only when there are several.
HOST_CHOICE_OPTIONS = {"target_session_attrs": "any", "load_balance_hosts": "disable"}
TARGET_FIELDS = ("host", "hostaddr", "port", "dbname", "user", "options")

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PORT = re.compile(r"\s*\+?\d+\s*")


class Host(NamedTuple):
    """One server a target may reach: libpq tries them in order."""

    address: str  # "" (libpq's default socket folder), a socket folder's real path,
    #               an IP address in its shortest form, or a lower-case host name
    port: int


class Target(NamedTuple):
    """Where libpq connects for a URL, with the PG* environment and defaults filled in."""

    hosts: tuple[Host, ...]
    dbname: str
    user: str
    settings: tuple[tuple[str, str], ...]  # the other options that are part of it, sorted
    unsure: frozenset[str] = frozenset()  # fields a service file we cannot read may set

    def __str__(self) -> str:
        """A postgresql:// URL naming this target, each part percent-encoded one way only
        (libpq reads it as the same target)."""
        hosts = ",".join(f"{_host_text(host.address)}:{host.port}" for host in self.hosts)
        query = "&".join(f"{key}={_encode(value)}" for key, value in self.settings)
        text = f"postgresql://{_encode(self.user)}@{hosts}/{_encode(self.dbname)}"
        return f"{text}?{query}" if query else text


def backend_of(database: str) -> str | None:
    """POSTGRESQL for a postgresql:// or postgres:// URL, MYSQL for a mysql:// or mariadb://
    one, None for anything else (a SQLite file's path)."""
    scheme, separator, _ = database.partition("://")
    if not separator:
        return None
    if scheme in SCHEMES:
        return POSTGRESQL
    if scheme in MYSQL_SCHEMES:
        return MYSQL
    return None


def is_url(database: str) -> bool:
    """True for a server's URL (PostgreSQL, MySQL or MariaDB), false for a file path."""
    return backend_of(database) is not None


def split_secrets(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its secrets, and the secrets (option name -> decoded value).

    The secrets are the password of the userinfo (`user:password@`) and every query
    parameter SECRET_OPTIONS names (however its name is percent-encoded); the last one
    given wins, as in libpq. Every other byte of the URL stays as it was written. A MySQL
    URL's are read by mysql_url.split_secrets.

    Raises ValueError for a URL libpq would refuse to parse; its text never quotes the URL.
    """
    if backend_of(url) == MYSQL:
        from broker import mysql_url  # only a node given a MySQL URL loads it

        return mysql_url.split_secrets(url)
    return _parse(url)[1:]


def secret_variables(url: str) -> Mapping[str, str]:
    """Secret option -> the environment variable a worker for `url` finds it in:
    SECRET_ENVIRONMENT for PostgreSQL, mysql_url.SECRET_ENVIRONMENT for MySQL."""
    if backend_of(url) == MYSQL:
        from broker import mysql_url

        return mysql_url.SECRET_ENVIRONMENT
    return SECRET_ENVIRONMENT


def secrets_environment(secrets: Mapping[str, str], url: str) -> dict[str, str]:
    """The environment variables that hand `secrets` (split_secrets(url)'s) to a worker
    for `url` (with or without its secrets)."""
    variables = secret_variables(url)
    return {variables[option]: value for option, value in secrets.items()}


def secrets_to_pass(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The secrets in `environ` that the worker must give libpq itself (all but PGPASSWORD,
    which libpq reads on its own), as connection options."""
    return {
        option: environ[variable]
        for option, variable in SECRET_ENVIRONMENT.items()
        if option != "password" and environ.get(variable)
    }


def target(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The canonical connection target of `url`: str(resolve(url, environ))."""
    return str(resolve(url, environ))


def resolve(
    url: str, environ: Mapping[str, str] | None = None
) -> Target | mysql_url.Target:
    """Where libpq would connect for `url`, in `environ` (default: this process's).

    Two URLs get equal targets when libpq reaches the same servers, in the same order, the
    same database as the same user with the same session options, however they are
    spelt: `postgres://` or `postgresql://`, a part in the URL or in a query parameter, in
    the PG* environment or left to libpq's default, percent-encoded or not, host names in
    any case, a socket folder through a symbolic link. They differ whenever anything that
    could change that differs: host, hostaddr (the address connected to, in place of the
    host it goes with), port, dbname, user, options, service, replication, an option this
    module does not know, and target_session_attrs or load_balance_hosts with several
    hosts. Secrets and the options of NEUTRAL_OPTIONS are not part of it.

    A named service is read from PGSERVICEFILE (or ~/.pg_service.conf) and from
    PGSYSCONFDIR's pg_service.conf; libpq's compiled-in folder cannot be known without
    libpq, so a service found in neither leaves the fields the URL does not give in
    `unsure` (see the worker's check). Raises ValueError, never quoting the URL, for a URL
    libpq would refuse: bad percent-encoding, a query parameter without `=`, a host list
    and a hostaddr or port list of different lengths, a port that is not a number.

    A MySQL URL's target is mysql_url.resolve's.
    """
    if backend_of(url) == MYSQL:
        from broker import mysql_url

        return mysql_url.resolve(url, environ)
    environ = os.environ if environ is None else environ
    params, _, _ = _parse(url)
    given = set(params)
    unsure: frozenset[str] = frozenset()
    service = params.get("service", environ.get("PGSERVICE"))
    if service is not None:
        params["service"] = service
        if not _read_service(service, environ, params):
            unsure = frozenset(TARGET_FIELDS) - given
    for option, variable in TARGET_ENVIRONMENT.items():
        if option not in params and variable in environ:
            params[option] = environ[variable]
    user = params.get("user") or _login_name()
    hosts = _hosts(params)
    settings = {
        key: value
        for key, value in params.items()
        if key not in NEUTRAL_OPTIONS and key not in HOST_CHOICE_OPTIONS
        and key not in ("host", "hostaddr", "port", "dbname", "user")
    }
    if not settings.get("options"):
        settings.pop("options", None)
    if len(hosts) > 1:
        for option, default in HOST_CHOICE_OPTIONS.items():
            settings[option] = params.get(option) or default
    return Target(
        hosts=hosts,
        dbname=params.get("dbname") or user,
        user=user,
        settings=tuple(sorted(settings.items())),
        unsure=unsure,
    )


def canonical_address(address: str) -> str:
    """A host as a target names it: "" for libpq's default, a socket folder's real path, an
    IP address in its shortest form, a host name in lower case."""
    if not address:
        return ""
    if address.startswith("/"):
        return os.path.realpath(address)
    if address.startswith("@"):  # an abstract socket: a name, not a path
        return address
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(family, socket.inet_pton(family, address))
        except OSError:
            continue
    return address.lower()


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


def _encode(text: str) -> str:
    return quote(os.fsencode(text), safe="")


def _host_text(address: str) -> str:
    if ":" in address and not address.startswith(("/", "@")):
        return f"[{quote(os.fsencode(address), safe=':')}]"  # IPv6
    return _encode(address)


def _hosts(params: Mapping[str, str]) -> tuple[Host, ...]:
    """libpq's connectOptions2: one entry per hostaddr (or host) item, ports matched up."""
    addresses = params.get("hostaddr", "").split(",") if params.get("hostaddr") else []
    names = params.get("host", "").split(",") if params.get("host") else []
    count = len(addresses) or len(names) or 1
    if addresses and names and len(names) != count:
        raise ValueError(f"could not match {len(names)} host names to {count} hostaddr values")
    ports = params.get("port", "").split(",") if params.get("port") else [""]
    if len(ports) == 1:
        ports *= count
    elif len(ports) != count:
        raise ValueError(f"could not match {len(ports)} port numbers to {count} hosts")
    hosts = []
    for index in range(count):
        address = addresses[index] if addresses else ""
        if not address:
            address = names[index] if names else ""
        hosts.append(Host(canonical_address(address), _port(ports[index])))
    return tuple(hosts)


def _port(text: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f'invalid port number: "{text}"')
    return int(text)


def _login_name() -> str:
    """libpq's default user: the name of the effective user id (not $USER)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise ValueError(
            f"user id {os.geteuid()} has no name, and the PostgreSQL URL names no user"
        ) from None


def _read_service(service: str, environ: Mapping[str, str], params: dict[str, str]) -> bool:
    """Fill the options `params` lacks from the service's group, as libpq's
    parseServiceInfo does; true if the group was found in a file we can read."""
    files = []
    if environ.get("PGSERVICEFILE") is not None:
        files.append(environ["PGSERVICEFILE"])
    else:
        files.append(os.path.join(environ.get("HOME") or os.path.expanduser("~"),
                                  ".pg_service.conf"))
    if environ.get("PGSYSCONFDIR") is not None:
        files.append(os.path.join(environ["PGSYSCONFDIR"], "pg_service.conf"))
    for path in files:
        try:
            with open(path, "rb") as service_file:
                lines = service_file.read().splitlines()
        except OSError:
            continue
        found = False
        for raw in lines:
            line = os.fsdecode(raw.strip())
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                if found:
                    break
                found = line[1:].startswith(service) and line[len(service) + 1:][:1] == "]"
            elif found:
                key, _, value = line.partition("=")
                if key not in SECRET_ENVIRONMENT:
                    params.setdefault(key, value)
        if found:
            return True
    return False
