"""MySQL and MariaDB URLs given as --db: the password out, the target named, the driver's
arguments made.

    --db URL --split_secrets()--+--> the URL without its password: the worker's argv, logs,
                                |    health
                                +--> the password, decoded: the worker's environment (MYSQL_PWD)
    the URL --target()------------> mysql://user@host:port/database (or ?unix_socket=...)
                                    names the worker's endpoint (broker/endpoint.py)
    the URL + MYSQL_PWD --connect_args()--> pymysql.connect(**arguments), in the worker

The form is `mysql://[user[:password]@][host][:port][/database][?param=value&...]`
(`mariadb://` is the same thing), read with the standard library only, so that a node never
loads a driver: the userinfo ends at the last `@` before the first `/` or `?` (a password
may hold a raw `@`; no `@` may follow, since a password's raw `/` or `?` would otherwise
show the rest of it as a database or a parameter), a host may be an [IPv6 address], every
part and every parameter is percent-decoded exactly once (`+` is a plus sign, not a space),
and a parameter's name reads `-` as `_` (the mysql client's spelling: ssl-mode, ssl-ca).
A password in a parameter must have its `&` percent-encoded (%26), or the rest of it reads
as the next parameter, which an error may name. The URL says everything:
unlike the mysql client, the worker reads no MYSQL_HOST, MYSQL_TCP_PORT or option file, so
that the node and the worker always mean the same server.

The password (of the userinfo, or `?password=`; the last one given wins) never reaches the
worker's argv (readable by every user in /proc), a log line, `health` or an error text:
`split_secrets()` cuts it out of the text, leaving every other byte as written, and the node
hands it, decoded, to the worker in MYSQL_PWD, the mysql client's own variable for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, unquote_to_bytes

from broker.database_url import MYSQL_SCHEMES, canonical_address

SCHEMES = MYSQL_SCHEMES
DEFAULT_HOST = "localhost"  # the mysql client's, and the driver's
DEFAULT_PORT = 3306
DEFAULT_CHARSET = "utf8mb4"  # every character; MySQL's older `utf8` holds three bytes at most
DEFAULT_CONNECT_TIMEOUT_S = 10
MAX_CONNECT_TIMEOUT_S = 31_536_000  # the driver refuses more (a year)
SECRET_ENVIRONMENT = {"password": "MYSQL_PWD"}  # the mysql client reads it too
SECRET_OPTIONS = tuple(SECRET_ENVIRONMENT)
# Every parameter a URL may give; anything else is refused, so that a typo never leaves
# the driver to a default that reaches another server or skips a certificate check.
PARAMETERS = ("unix_socket", "charset", "ssl_mode", "ssl_ca", "ssl_cert", "ssl_key",
              "connect_timeout", "password")
ALIASES = {"socket": "unix_socket"}  # the mysql client's --socket
# The parameters that pick neither the server nor the database: not part of a target.
NEUTRAL_PARAMETERS = frozenset(PARAMETERS) - {"unix_socket"}
PATH_PARAMETERS = ("unix_socket", "ssl_ca", "ssl_cert", "ssl_key")
# The mysql client's --ssl-mode values, weakest first.
SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNSEEN = re.compile(r"[\s\x00-\x1f\x7f]")
_CHARSET = re.compile(r"[A-Za-z0-9_]+")


class Target(NamedTuple):
    """The server and database a URL reaches, as the user it connects as."""

    user: str
    database: str
    host: str  # a canonical_address: an IP address in its shortest form, a lower-case
    #            host name; "" when a unix socket is given (the host is then not used)
    port: int  # 0 when a unix socket is given
    unix_socket: str = ""  # the socket's real path, or ""

    def __str__(self) -> str:
        """A mysql:// URL naming this target, each part percent-encoded one way only (it
        reads as this same target)."""
        head = f"mysql://{_encode(self.user)}@"
        if self.unix_socket:
            return f"{head}/{_encode(self.database)}?unix_socket={_encode(self.unix_socket)}"
        return f"{head}{_host_text(self.host)}:{self.port}/{_encode(self.database)}"


class _Reading(NamedTuple):
    user: str | None  # None: not given
    host: str  # decoded, "" when not given
    port: int  # DEFAULT_PORT when not given
    database: str
    params: dict[str, str]  # PARAMETERS' names, decoded, the password left out
    public: str  # the URL as written, without its password
    secrets: dict[str, str]


def split_secrets(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the password ({"password": decoded}, or {}).

    An empty password given on purpose (`user:@host`, `?password=`) is a secret too: it
    overrides a MYSQL_PWD the worker might otherwise inherit. Every other byte of the URL
    stays as it was written.

    Raises ValueError for a URL this module refuses (see resolve); its text never quotes
    the URL.
    """
    reading = _parse(url)
    return reading.public, reading.secrets


def with_database(url: str, database: str) -> str:
    """`url` naming `database` instead of its own, every other byte as written (a scratch
    database beside it, on the same server, as the same user).

    Raises ValueError as resolve does."""
    _parse(url)
    head, slash, rest = url.partition("://")
    authority, _, tail = rest.partition("/")
    _, question, query = tail.partition("?")
    return f"{head}{slash}{authority}/{_encode(database)}{question}{query}"


def secrets_environment(secrets: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that hand `secrets` to a worker."""
    return {SECRET_ENVIRONMENT[option]: value for option, value in secrets.items()}


def target(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The canonical target of `url`: str(resolve(url))."""
    return str(resolve(url, environ))


def resolve(url: str, environ: Mapping[str, str] | None = None) -> Target:
    """The server and database `url` reaches, and the user it connects as.

    Two URLs get equal targets however they are spelt: `mysql://` or `mariadb://`, a
    default port written or not, percent-encoded or not, host names in any case, an IP
    address in any form, a socket through a symbolic link, in any order of parameters,
    with or without a password, charset, TLS setting or timeout. They differ whenever the
    user, host, port, database or unix_socket differ (with a socket, host and port are not
    used, and not part of it). `localhost` and `127.0.0.1` stay apart: the server tells
    their accounts apart. The user defaults to the name of this process's effective user
    id, as the mysql client's does. `environ` is not read (see the module's docstring).

    Raises ValueError, never quoting the URL, for a URL that names no database (the
    tracking tables live in one), a malformed one (bad percent-encoding, a port that is
    not a number from 1 to 65535, an unclosed [IPv6 address], a parameter without `=`), an
    unknown parameter (named, with the known ones), or a parameter's bad value.
    """
    reading = _parse(url)
    socket_path = reading.params.get("unix_socket", "")
    return Target(
        user=reading.user if reading.user is not None else _login_name(),
        database=reading.database,
        host="" if socket_path else canonical_address(reading.host or DEFAULT_HOST),
        port=0 if socket_path else reading.port,
        unix_socket=canonical_address(socket_path) if socket_path else "",
    )


def connect_args(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments of pymysql.connect() for `url` (the public one, or one still
    holding its password): host, port, user, password (the URL's, else MYSQL_PWD in
    `environ`, default this process's, else the `password` of the [client] group of the
    option file ~/.my.cnf, as the mysql client reads it; None without any), database,
    unix_socket (None
    for TCP), charset (default utf8mb4), connect_timeout (default 10 seconds), and ssl or
    ssl_disabled when the URL asks for them:

        no ssl_* parameter          neither: the driver's own default
        ssl_mode=DISABLED           ssl_disabled=True
        ssl_mode=PREFERRED          neither, unless a certificate file is given (then as
                                    REQUIRED: the driver cannot prefer with its own files)
        ssl_mode=REQUIRED           ssl: TLS or no connection, the certificate not checked
        ssl_mode=VERIFY_CA          ssl: the certificate checked against ssl_ca
        ssl_mode=VERIFY_IDENTITY    ssl: that too, and the host name it names
        ssl_ca/ssl_cert/ssl_key alone   ssl with those files: TLS or no connection, the
                                        certificate checked when ssl_ca is given

    Raises ValueError as resolve does.
    """
    environ = os.environ if environ is None else environ
    reading = _parse(url)
    params = reading.params
    password = reading.secrets.get("password", environ.get(SECRET_ENVIRONMENT["password"]))
    if password is None:
        password = option_file_password(environ)
    arguments: dict[str, Any] = {
        "host": reading.host or DEFAULT_HOST,
        "port": reading.port,
        "user": reading.user if reading.user is not None else _login_name(),
        "password": password,
        "database": reading.database,
        "unix_socket": params.get("unix_socket"),
        "charset": params.get("charset", DEFAULT_CHARSET),
        "connect_timeout": int(params.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)),
    }
    mode = params.get("ssl_mode", "").upper()
    files = {key: params[f"ssl_{key}"] for key in ("ca", "cert", "key") if f"ssl_{key}" in params}
    if mode == "DISABLED":
        arguments["ssl_disabled"] = True
    elif mode == "PREFERRED" and not files:
        pass  # the driver's default
    elif mode:
        verify = mode in ("VERIFY_CA", "VERIFY_IDENTITY")
        arguments["ssl"] = {**files, "verify_mode": verify,
                            "check_hostname": mode == "VERIFY_IDENTITY"}
    elif files:
        arguments["ssl"] = files
    return arguments


def option_file_password(environ: Mapping[str, str]) -> str | None:
    """The password of the [client] group of ~/.my.cnf (HOME from `environ`), or None.
    Only the password is taken from it: the URL alone says where to connect, so that the
    worker's target is the one its endpoint is named by."""
    import configparser

    home = environ.get("HOME") or os.path.expanduser("~")
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False)
    try:
        parser.read(os.path.join(home, ".my.cnf"), encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None  # a file the mysql client would refuse too: no password from it
    value = parser.get("client", "password", fallback=None)
    if value is None:
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


# -- reading a URL -------------------------------------------------------------------------


def _parse(url: str) -> _Reading:
    scheme = next((f"{name}://" for name in SCHEMES if url.startswith(f"{name}://")), None)
    if scheme is None:
        raise ValueError("a MySQL URL begins with mysql:// or mariadb://")
    try:
        url.encode()
    except UnicodeEncodeError:  # bytes of argv that were not UTF-8
        raise ValueError("the MySQL URL is not UTF-8 text") from None
    if _UNSEEN.search(url):
        raise ValueError("the MySQL URL has a space or a control character: percent-encode it")
    start, end = len(scheme), len(url)
    authority_end = _find_any(url, "/?", start)
    if "@" in url[authority_end:]:
        # Most likely a password with a raw '/' or '?', which ended the host early: the
        # rest of it would be read as a database or parameter, and shown.
        raise ValueError("the MySQL URL has an '@' after its host: percent-encode an '@'"
                         " (%40), or a '/' (%2F) or '?' (%3F) in a password")
    public = scheme
    secrets: dict[str, str] = {}
    user = None
    at = url.rfind("@", start, authority_end)
    if at != -1:
        colon = url.find(":", start, at)
        if colon == -1:
            colon = at
        if colon > start:
            user = _decode(url[start:colon])
        if colon < at:
            secrets["password"] = _decode(url[colon + 1:at])
        public += url[start:colon] + "@"
        start = at + 1
    host, port = _host_and_port(url[start:authority_end])
    public += url[start:authority_end]
    p = authority_end
    database = ""
    if p < end and url[p] == "/":
        stop = _find_any(url, "?", p + 1)
        if "/" in url[p + 1:stop]:
            raise ValueError("the MySQL URL's path has more than one part: write a '/' in a"
                             " database name as %2F")
        database = _decode(url[p + 1:stop])
        public += url[p:stop]
        p = stop
    params: dict[str, str] = {}
    kept = []
    for pair in url[p + 1:].split("&") if p + 1 < end else []:
        key, equals, value = pair.partition("=")
        if not equals:
            raise ValueError("a parameter of the MySQL URL has no '='")
        key = _decode(key).replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in PARAMETERS:
            known = ", ".join(f"{name} (or socket)" if name == "unix_socket" else name
                              for name in PARAMETERS)
            raise ValueError(f"the MySQL URL has an unknown parameter {key!r}; the known ones"
                             f" are {known}")
        if key in SECRET_ENVIRONMENT:
            secrets[key] = _decode(value)
            continue
        params[key] = _decode(value)
        kept.append(pair)
    if kept:
        public += "?" + "&".join(kept)
    if not database:
        raise ValueError("the MySQL URL names no database, and the tracking tables need one:"
                         " mysql://user@host/DATABASE")
    _check(params)
    return _Reading(user, host, port, database, params, public, secrets)


def _host_and_port(text: str) -> tuple[str, int]:
    """The decoded host ("" when not given) and the port of `host[:port]`."""
    if text.startswith("["):
        close = text.find("]")
        if close <= 1:
            raise ValueError("the MySQL URL has an unclosed or empty [IPv6 address]")
        host, rest = _decode(text[1:close]), text[close + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("the MySQL URL has a character after an [IPv6 address]")
        port_text = rest[1:]
    else:
        raw_host, _, port_text = text.partition(":")
        host = _decode(raw_host)
    if host.startswith("/"):
        raise ValueError("the MySQL URL's host is a path: give a socket as ?unix_socket=PATH")
    port_text = _decode(port_text)
    if not port_text:
        return host, DEFAULT_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError("the MySQL URL's port is not a number from 1 to 65535 (an IPv6"
                         " address goes in [brackets])")
    return host, int(port_text)


def _check(params: Mapping[str, str]) -> None:
    """Raise ValueError for a parameter's value the driver would refuse or misread."""
    for key, value in params.items():
        if not value:
            raise ValueError(f"the MySQL URL's parameter {key} is empty")
    for key in PATH_PARAMETERS:
        # The worker runs in another folder: a relative path would name another file.
        if key in params and not params[key].startswith("/"):
            raise ValueError(f"the MySQL URL's {key} must be an absolute path")
    if "charset" in params and not _CHARSET.fullmatch(params["charset"]):
        raise ValueError("the MySQL URL's charset must be a character set's name (utf8mb4)")
    timeout = params.get("connect_timeout")
    if timeout is not None and not (
        timeout.isascii() and timeout.isdigit() and 1 <= int(timeout) <= MAX_CONNECT_TIMEOUT_S
    ):
        raise ValueError(f"the MySQL URL's connect_timeout must be a whole number of seconds"
                         f" from 1 to {MAX_CONNECT_TIMEOUT_S}")
    mode = params.get("ssl_mode", "").upper()
    if mode and mode not in SSL_MODES:
        raise ValueError(f"the MySQL URL's ssl_mode must be one of {', '.join(SSL_MODES)}")
    files = [key for key in ("ssl_ca", "ssl_cert", "ssl_key") if key in params]
    if mode == "DISABLED" and files:
        raise ValueError(f"the MySQL URL says ssl_mode=DISABLED and gives {', '.join(files)}")
    if mode.startswith("VERIFY_") and "ssl_ca" not in params:
        raise ValueError(f"the MySQL URL's ssl_mode={mode} needs ssl_ca, the certificate"
                         " authority to verify the server against")
    if "ssl_key" in params and "ssl_cert" not in params:
        raise ValueError("the MySQL URL gives ssl_key without ssl_cert")


def _find_any(text: str, stops: str, start: int) -> int:
    """The index of the first of `stops` in text[start:], or len(text)."""
    for index in range(start, len(text)):
        if text[index] in stops:
            return index
    return len(text)


def _decode(text: str) -> str:
    """%XX escapes become bytes, read as UTF-8 (the text a server's names are in)."""
    if _BAD_ESCAPE.search(text):
        raise ValueError("the MySQL URL has an invalid percent-encoded token")
    raw = unquote_to_bytes(text)
    if b"\x00" in raw:
        raise ValueError("the MySQL URL has a forbidden %00")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError("the MySQL URL has percent-encoded bytes that are not UTF-8") from None


def _encode(text: str) -> str:
    return quote(text, safe="")


def _host_text(address: str) -> str:
    if ":" in address:
        return f"[{quote(address, safe=':')}]"  # IPv6
    return _encode(address)


def _login_name() -> str:
    """The mysql client's default user: the name of the effective user id."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise ValueError(
            f"user id {os.geteuid()} has no name, and the MySQL URL names no user"
        ) from None
