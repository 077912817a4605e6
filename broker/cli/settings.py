"""Settings, resolved once for the stdio node and the commands alike, each knowing its origin.

    command line  >  environment (DATABASE_URL, MIGRATIONS_DIR, MIGRATIONS_DUMP)
        >  [tool.migrations-node] in the nearest pyproject.toml, from the working
           directory upwards  >  defaults

Defaults fit the folder you stand in: with a project table, `migrations.db` and
`migrations/` beside its pyproject.toml; without one, in the working directory; and when
that has no `migrations/` and nothing names a folder, the bundled examples (so the seed's
exchanges work anywhere). Relative paths in the file are relative to the file. Nothing
else reads the environment for a setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from broker import database_url

PROJECT_FILE = "pyproject.toml"
SQLITE_SCHEMES = frozenset({"sqlite", "sqlite3"})
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
TABLE = "migrations-node"  # [tool.migrations-node]
ENVIRONMENT = {"db": "DATABASE_URL", "migrations": "MIGRATIONS_DIR", "dump": "MIGRATIONS_DUMP"}
DEFAULT_DB = "migrations.db"
DEFAULT_FOLDER = "migrations"
OWNER_WAIT_S = 30.0  # PostgreSQL: a write waits this long for another host's worker to go
# PostgreSQL: how long a statement of a migration waits for a lock (when neither this setting
# nor the URL says), and how many more tries a migration gets after such a wait.
LOCK_TIMEOUT_S = 3.0
LOCK_RETRIES = 5
DEFAULTS: dict[str, Any] = {
    "table": "schema_migrations",
    "schema": None,
    "wal": False,
    "owner_wait": OWNER_WAIT_S,
    "lock_timeout": None,  # the URL's lock_timeout, else LOCK_TIMEOUT_S (see the worker)
    "lock_retries": LOCK_RETRIES,
    "envelope": False,
    "connect": None,
    "keys": None,
    "log_level": "WARNING",
    "dump": None,  # the file `migrate` and `rollback` commands rewrite (the stdio node: never)
}
# Where a value came from, as `config` says it.
COMMAND_LINE = "command line"
DEFAULT = "default"
BUNDLED = "default: the bundled examples (no migrations/ here, none configured)"


class SettingsError(Exception):
    """A project file or environment variable that cannot be used: bad usage (exit 2)."""


class Setting(NamedTuple):
    value: Any
    origin: str  # COMMAND_LINE, an environment variable's name, a file's path, or DEFAULT...


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValueError("a non-empty string")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63:
        raise ValueError("a number of seconds, 0 or more")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError("a whole number, 0 or more")
    return value


# The keys a project file may set (the long option names), and how each value is read.
FILE_KEYS: dict[str, Callable[[Any], Any]] = {
    "db": _text,
    "migrations": _text,
    "table": _text,
    "schema": _text,
    "wal": _flag,
    "owner-wait": _seconds,
    "lock-timeout": _seconds,
    "lock-retries": _count,
    "envelope": _flag,
    "connect": _text,
    "keys": _text,
    "log-level": _text,
    "dump": _text,
}
PATHS = frozenset({"migrations", "keys", "dump"})  # relative to the file that names them


def resolve(given: Mapping[str, Any], environ: Mapping[str, str], cwd: Path) -> dict[str, Setting]:
    """Every setting (db, migrations, table, schema, wal, owner_wait, lock_timeout,
    lock_retries, envelope, connect, keys, log_level, dump) with its origin. `given` holds only
    the options on the command line.

    Raises SettingsError naming the file and key, or the variable, that cannot be used.
    """
    project, table = find_project(cwd) or (None, {})
    home = cwd if project is None else project.parent
    settings: dict[str, Setting] = {}
    for key in ("db", "migrations", *DEFAULTS):
        option = key.replace("_", "-")
        if key in given:
            settings[key] = Setting(given[key], COMMAND_LINE)
        elif key in ENVIRONMENT and environ.get(ENVIRONMENT[key]):
            settings[key] = Setting(environ[ENVIRONMENT[key]], ENVIRONMENT[key])
        elif option in table:
            settings[key] = Setting(_beside(project, option, table[option]), str(project))
        elif key == "db":
            settings[key] = Setting(str(home / DEFAULT_DB), DEFAULT)
        elif key == "migrations":
            settings[key] = default_folder(home)
        else:
            settings[key] = Setting(DEFAULTS[key], DEFAULT)
    settings["db"] = settings["db"]._replace(value=database_path(settings["db"]))
    if not isinstance(settings["migrations"].value, Path):
        settings["migrations"] = settings["migrations"]._replace(
            value=Path(settings["migrations"].value))
    return settings


def database_path(setting: Setting) -> str:
    """What `--db` names: a server's URL (PostgreSQL, MySQL) as it is, a SQLite file path,
    or a SQLite URL as dbmate and golang-migrate write them (`sqlite:db/app.db`,
    `sqlite3://db/app.db`, `sqlite:///abs/app.db`) turned into its path. Raises
    SettingsError for another scheme, which would otherwise become a file of that name."""
    value = str(setting.value)
    if database_url.is_url(value):
        return value
    scheme, colon, rest = value.partition(":")
    if not colon or not SCHEME.fullmatch(scheme):
        return value
    if scheme.lower() in SQLITE_SCHEMES:
        path = rest.removeprefix("//").partition("?")[0]
        if path:
            return path
        raise SettingsError(f"the database from {setting.origin} is a {scheme}: URL that names"
                            " no file: sqlite:PATH")
    if not rest.startswith("//"):
        return value  # a file whose name has a colon in it
    # Never the value itself: a URL may hold a password.
    raise SettingsError(f"the database from {setting.origin} is a {scheme}: URL, which this"
                        " tool does not reach: give a SQLite file path (or sqlite:PATH), a"
                        " postgresql:// URL or a mysql:// URL")


def default_folder(home: Path) -> Setting:
    """`migrations/` in `home` when there is one, else the bundled examples."""
    here = home / DEFAULT_FOLDER
    if here.is_dir():
        return Setting(here, DEFAULT)
    from broker.cli.bundled import bundled_migrations

    return Setting(bundled_migrations(), BUNDLED)


def find_project(cwd: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest pyproject.toml from `cwd` upwards that has a [tool.migrations-node]
    table, and the table; a pyproject.toml without one configures nothing, and the search
    goes on.

    Raises SettingsError for a file that names the tool but cannot be read as TOML.
    """
    for folder in (cwd, *cwd.parents):
        candidate = folder / PROJECT_FILE
        try:
            text = candidate.read_bytes()
        except OSError:
            continue
        # Most files never name the tool: no TOML parser is loaded for them.
        if TABLE.encode() in text:
            table = read_table(candidate, text, missing=None)
            if table is not None:
                return candidate, table
    return None


def read_table(
    path: Path, text: bytes | None = None, missing: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The [tool.migrations-node] table of a pyproject.toml, checked key by key (`missing`
    when it has none).

    Raises SettingsError for a file that is not TOML, an unknown key or a bad value.
    """
    import tomllib  # only a node that finds a project file pays for it

    try:
        document = tomllib.loads((path.read_bytes() if text is None else text).decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    tools = document.get("tool", {})
    if not isinstance(tools, dict) or TABLE not in tools:
        return missing
    table = tools[TABLE]
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [tool.{TABLE}] must be a table")
    checked = {}
    for key, value in table.items():
        option = key.replace("_", "-")
        if option not in FILE_KEYS:
            known = ", ".join(FILE_KEYS)
            raise SettingsError(f"{path}: [tool.{TABLE}] has an unknown key {key!r};"
                                f" the keys are {known}")
        try:
            checked[option] = FILE_KEYS[option](value)
        except ValueError as exc:
            raise SettingsError(f"{path}: [tool.{TABLE}] {key} must be {exc}, not"
                                f" {value!r}") from None
    return checked


def _beside(project: Path, option: str, value: Any) -> Any:
    """A path in the file, relative to the file; a SQLite `db` too, never a URL."""
    relative_path = option in PATHS or (option == "db" and not database_url.is_url(value))
    if relative_path and not os.path.isabs(value):
        return str(project.parent / value)
    return value
