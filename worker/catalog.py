"""Finding migration files in a folder, loading them, and checking their checksums.

A migration is a file `NNNN_name.py` that defines up(db) and, to be reversible, down(db),
or SQL in one of the formats worker/readers/ reads: a file `NNNN_name.sql` with dbmate's,
goose's or sql-migrate's section markers, golang-migrate's `NNNN_name.up.sql` with its
optional `NNNN_name.down.sql`, Flyway's `VNNNN__description.sql` with its optional undo
`UNNNN__description.sql`. NNNN is ASCII digits, the version (1 to 2^63 - 1). Other files
are ignored. Listing the folder does not read any file, and is cached until the folder
changes, so `status` stays cheap.

A repeatable migration (Flyway's) is a file `R__name.sql` (plain SQL, run whole) or
`R__name.py` (an up(db)): no version, applied after the versioned ones whenever its
checksum changed, never reverted; `Catalog.repeatables()` lists them, by name.

    Migration.load() -> Loaded(up, down, foreign_keys, checksum)    to apply or revert it
    Migration.prepare() -> Loaded | Compiled      load() short of running code, any thread
    Catalog.source_checksum_matches(migration, recorded) -> bool      to validate it

A migration in two files is a PairedMigration, which also knows its down file's path, and
whose checksum covers both files (see Migration.source).
"""

from __future__ import annotations

import os
import re
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from broker.errors import PRECONDITION_FAILED, ReplyError
from worker import sql_file
from worker.readers import names

if TYPE_CHECKING:
    from worker.readers import pick

REPEATABLE_FILE = re.compile(r"R__(.+)\.(py|sql)\Z")  # Flyway's prefix; no version
MAX_VERSION = 2**63 - 1  # the largest SQLite INTEGER, and msgpack's int64
RACY_WINDOW_NS = 2_000_000_000  # what changed this recently is not cached (listings, checksums)
NORMALIZED_CHECKSUM = "norm-sha256:"  # prefix of checksum_of(); older rows hold a bare sha256
RAW_CHECKSUM = re.compile(r"[0-9a-f]{64}\Z")


class Loaded(NamedTuple):
    """A migration file made runnable: what apply and revert call, and what to record."""

    up: Callable[[Any], object] | None
    down: Callable[[Any], object] | None  # None: it cannot be reverted
    foreign_keys: bool  # False: it must run with foreign keys off
    checksum: str  # checksum_of() the bytes that were loaded
    up_transaction: bool = True  # False: up's statements run outside a transaction
    down_transaction: bool = True  # False: down's statements run outside a transaction
    # How long each statement waits for a lock, in seconds (0: for ever; None: as the
    # worker is told): `lock_timeout:` on a section marker, LOCK_TIMEOUT in a .py file.
    up_lock_timeout_s: float | None = None
    down_lock_timeout_s: float | None = None
    # What would revert it, for an error saying it has none ("-- +goose Down section").
    down_named: str = "down() function"
    # A .sql file's statements, as its sections run them (None: a .py file's code), so
    # that the down statements matching part of its up can be told (see steps.py).
    up_statements: tuple[str, ...] | None = None
    down_statements: tuple[str, ...] | None = None


class Compiled(NamedTuple):
    """A .py migration file's bytes compiled, not yet run, and their checksum."""

    code: types.CodeType
    checksum: str


def _compiled(source: bytes, path: str) -> Compiled:
    return Compiled(compile(source, path, "exec"), checksum_of(source))


def _module_of(compiled: Compiled, name: str, path: str) -> types.ModuleType:
    """A fresh module named `name` that ran the compiled file."""
    module = types.ModuleType(name)
    module.__file__ = path
    exec(compiled.code, module.__dict__)
    return module


class Migration(NamedTuple):
    """A migration file; a tuple, because a catalog may hold ten thousand of them."""

    version: int
    name: str
    path: str  # a plain string: Path objects weigh several times more
    # How a .sql file's sections are cut into statements: the database's rules.
    split_statements: Callable[[str], Iterator[str]] = sql_file.split_statements

    down_path = None  # no down file of its own; see PairedMigration

    def entry(self, **fields: object) -> dict[str, object]:
        """The reply entry for this migration: version and name, then `fields`."""
        return {"version": self.version, "name": self.name, **fields}

    @property
    def kind(self) -> str:
        """The file's kind, from its suffix: "py" or "sql"."""
        return self.path.rpartition(".")[2]

    def source(self) -> bytes:
        """The bytes the migration's checksum is of (checksum_of): its file's bytes, or for
        a PairedMigration both its files' (see paired_source).

        Raises OSError (FileNotFoundError if a file is gone).
        """
        up = _read_bytes(self.path)
        return up if self.down_path is None else paired_source(up, _read_bytes(self.down_path))

    def read_sql(
        self, split_statements: Callable[[str], Iterator[str]] | None = None
    ) -> tuple[pick.Read, str]:
        """Read a SQL migration's file (or files) once, with the reader its name picks:
        what the reader made of them, and the checksum of the bytes read. Statements are
        cut by `split_statements` (the migration's own when None).

        Raises sql_file.SqlFileError (a ValueError) naming the file and line if it is
        malformed or not UTF-8, OSError if a file cannot be read.
        """
        from worker.readers import pick

        up = _read_bytes(self.path)
        down = None if self.down_path is None else (self.down_path, _read_bytes(self.down_path))
        read = pick.read(self.path, up, down, split_statements or self.split_statements)
        return read, checksum_of(up if down is None else paired_source(up, down[1]))

    def prepare(self) -> Loaded | Compiled:
        """What load() does short of running the file's code: a .sql file's Loaded, or a
        .py file's bytes compiled, with their checksum. Runs no code of the file, so it is
        safe on any thread (see worker/ahead.py); raises what load() raises for a file
        that cannot be read, parsed or compiled.
        """
        if self.kind == "py":
            return _compiled(self.source(), self.path)
        read, checksum = self.read_sql()
        filename = os.path.basename(self.path)
        down_filename = os.path.basename(self.down_path or self.path)
        parsed = read.parsed
        return Loaded(
            _statements_runner(parsed.up, "up", filename, parsed.up_stub),
            # An empty down section (or file) reverts nothing and succeeds, as in dbmate,
            # goose and golang-migrate; only a migration without one cannot be reverted.
            None
            if parsed.down is None
            else _statements_runner(parsed.down, "down", down_filename, parsed.down_stub),
            parsed.foreign_keys,
            checksum,
            parsed.up_transaction,
            parsed.down_transaction,
            parsed.up_lock_timeout,
            parsed.down_lock_timeout,
            read.down_named,
            tuple(parsed.up),
            None if parsed.down is None else tuple(parsed.down),
        )

    def load(self, prepared: Loaded | Compiled | None = None) -> Loaded:
        """Read the file once and make it runnable, with the checksum of the bytes read;
        from what prepare() gave, when given.

        A .py file is executed as a fresh module: compiling the bytes we hashed (rather than
        importing by path) means the checksum recorded is of exactly the code that ran, and
        no __pycache__ is written beside it. Raises whatever it raises (SyntaxError,
        ImportError, ...), or TypeError if it sets FOREIGN_KEYS to anything but a bool.

        A .sql file (with its down file, if apart) is parsed by its format's reader, never
        executed here; raises sql_file.SqlFileError (a ValueError) naming the file and line
        if it is malformed or not UTF-8.
        Raises OSError if a file cannot be read.
        """
        prepared = self.prepare() if prepared is None else prepared
        if isinstance(prepared, Loaded):
            return prepared
        filename = os.path.basename(self.path)
        module = _module_of(prepared, f"migration_{self.version}_{self.name}", self.path)
        foreign_keys, transaction = (
            _declared(module, name, filename) for name in ("FOREIGN_KEYS", "TRANSACTION")
        )
        lock_timeout = _lock_timeout(module, filename)
        return Loaded(
            _callable(module, "up"),
            _callable(module, "down"),
            foreign_keys,
            prepared.checksum,
            transaction,  # a .py file's TRANSACTION is for both of its functions
            transaction,
            lock_timeout,  # and so is its LOCK_TIMEOUT
            lock_timeout,
        )


class PairedMigration(Migration):
    """A migration in two files: golang-migrate's up and down, Flyway's V and U. `path` is
    the file that applies it, `down_path` the one that reverts it.

    A class of its own, so that the common one-file migration carries no field for a
    second path: the down path lives in this instance's attributes. Equality is still the
    tuple's (version, name, path, split_statements); a version is in a catalog once.
    """

    down_path: str  # type: ignore[assignment]

    def __new__(
        cls,
        version: int,
        name: str,
        path: str,
        split_statements: Callable[[str], Iterator[str]],
        down_path: str,
    ) -> PairedMigration:
        migration = super().__new__(cls, version, name, path, split_statements)
        migration.down_path = down_path
        return migration

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle call __new__ with these
        return (*self, self.down_path)

    def _replace(self, **fields: Any) -> PairedMigration:
        down_path = fields.pop("down_path", self.down_path)
        return PairedMigration(*super()._replace(**fields), down_path)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def paired_source(up: bytes, down: bytes) -> bytes:
    """What the checksum of a migration in two files is of: the up file's lines and then
    the down file's, each file normalized as checksum_of normalizes one (so line endings
    and trailing whitespace in either change nothing), after a line counting the up
    file's lines (so that no line can move from one file to the other unnoticed)."""
    up_lines, down_lines = _normalized_lines(up), _normalized_lines(down)
    return b"\n".join([b"%d lines of the up file, then the down file" % len(up_lines),
                       *up_lines, *down_lines])


def _declared(module: types.ModuleType, name: str, filename: str) -> bool:
    """A module's True/False declaration (`FOREIGN_KEYS`, `TRANSACTION`), True by default;
    raises TypeError naming the file for anything but a bool."""
    value = module.__dict__.get(name, True)
    if not isinstance(value, bool):
        raise TypeError(
            f"{filename} sets {name} to a {type(value).__name__}; it must be True or False"
        )
    return value


def _lock_timeout(module: types.ModuleType, filename: str) -> float | None:
    """A module's LOCK_TIMEOUT in seconds (0: wait for ever), None when it sets none;
    raises TypeError naming the file for anything but a number, 0 or more."""
    value = module.__dict__.get("LOCK_TIMEOUT")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**63:
        raise TypeError(
            f"{filename} sets LOCK_TIMEOUT to {value!r}; it must be a number of seconds,"
            " 0 or more (0: wait for the lock for ever)"
        )
    return float(value)


def _callable(module: types.ModuleType, name: str) -> Callable[[Any], object] | None:
    function = getattr(module, name, None)
    return function if callable(function) else None


def _statements_runner(
    statements: list[str], section: str, filename: str, stub_line: int = 0
) -> Callable[[Any], object]:
    """A function of `db` that executes `statements` in order, each as written.

    Whatever a statement raises propagates unchanged (the store reads sqlite3 error codes
    from it), with a note saying which statement it was. For a section that is still a
    stub (`stub_line`, see sql_file), it raises sql_file.UnwrittenSection and runs nothing:
    only when called, so that a stub's unwritten down section does not stop its up. An
    empty `section` is a file that runs whole (a repeatable migration's), named alone.
    """
    where = f"the {section} section of {filename}" if section else filename

    def run(db: Any) -> None:
        if stub_line:
            raise sql_file.UnwrittenSection(filename, section, stub_line)
        for number, statement in enumerate(statements, 1):
            try:
                db.execute(statement)
            except Exception as exc:
                exc.add_note(
                    f"in statement {number} of {len(statements)} of {where}:"
                    f" {statement.strip()[: sql_file.SHOWN_CHARS]!r}"
                )
                raise

    return run


def checksum_of(source: bytes) -> str:
    """The checksum recorded for a migration file whose bytes are `source`.

    It is "norm-sha256:" and the sha256 of the text with line endings made `\\n`, spaces and
    tabs at the end of each line removed, and empty lines at the end removed, so that a
    checkout on another operating system or an editor's whitespace does not change it.
    """
    import hashlib  # only applying and validating need it: status and start-up do not

    return NORMALIZED_CHECKSUM + hashlib.sha256(b"\n".join(_normalized_lines(source))).hexdigest()


def _normalized_lines(source: bytes) -> list[bytes]:
    """The lines of `source`, each without its spaces and tabs at the end, without the
    empty lines at the end."""
    lines = [line.rstrip(b" \t") for line in source.splitlines()]  # bytes: \n, \r\n, \r only
    while lines and not lines[-1]:
        lines.pop()
    return lines


def checksum_matches(recorded: str, source: bytes) -> bool:
    """Whether `source` has the checksum `recorded`, under the rule it was recorded with.

    A value starting with "norm-sha256:" compares with checksum_of(source); a bare sha256
    (64 hex digits, written before checksums were normalized) with the sha256 of the exact
    bytes. Any other value matches nothing.
    """
    if recorded.startswith(NORMALIZED_CHECKSUM):
        return recorded == checksum_of(source)
    if RAW_CHECKSUM.match(recorded):
        import hashlib

        return recorded == hashlib.sha256(source).hexdigest()
    return False


class DuplicateVersion(ReplyError):
    def __init__(self, version: int, first: Path, second: Path) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration version {version} is defined twice: {first.name} and {second.name}",
        )


class VersionZero(ReplyError):
    def __init__(self, filename: str) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration file {filename} has version 0, below the smallest allowed 1",
        )


class VersionTooLarge(ReplyError):
    def __init__(self, filename: str, digits: str) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration file {filename} has version {digits},"
            f" above the largest allowed {MAX_VERSION}",
        )


class VersionNotWhole(ReplyError):
    def __init__(self, filename: str, version: str) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration file {filename} has version {version}, and versions are whole"
            " numbers here (a dotted Flyway version such as 1.1 is not taken): rename it",
        )


class DownWithoutUp(ReplyError):
    def __init__(self, filename: str, version: int, up_file: str) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"migration file {filename} reverts version {version}, but no {up_file} applies"
            " it: add that file, or remove this one",
        )


class NameNotUtf8(ReplyError):
    def __init__(self, filename: str) -> None:
        shown = os.fsencode(filename).decode("utf-8", errors="backslashreplace")
        super().__init__(
            PRECONDITION_FAILED, f"migration file name {shown} is not valid UTF-8; rename it"
        )


class Catalog:
    """The migrations of one folder, in version order.

    `split_statements` cuts a .sql file's sections into statements by the rules of the
    database they run on: SQLite's by default, pg_sql.split_statements for PostgreSQL
    (see sql_file.split_statements for what it must yield and raise).
    """

    def __init__(
        self,
        folder: Path,
        *,
        split_statements: Callable[[str], Iterator[str]] = sql_file.split_statements,
    ) -> None:
        self.folder = folder
        self._split_statements = split_statements
        self._stamp: int | None = None
        self._migrations: list[Migration] = []
        self.generation = 0  # grows each time the folder is listed anew
        self._verdicts: dict[str, _Verdict] = {}  # path -> the last checksum comparison
        self._repeatables_stamp: int | None = None
        self._repeatables: list[Repeatable] = []
        self._checksums: dict[str, tuple[tuple[int, int, int, int], str]] = {}  # path -> kept

    def migrations(self) -> list[Migration]:
        """Every migration file, sorted by version.

        Raises DuplicateVersion, VersionZero, VersionTooLarge, VersionNotWhole,
        DownWithoutUp or NameNotUtf8 (all PRECONDITION_FAILED replies) for a folder holding
        a migration file that cannot be served.

        Raises FileNotFoundError if the folder is missing.
        """
        stamp = os.stat(self.folder).st_mtime_ns
        if stamp != self._stamp:
            self._migrations = scan(self.folder, self._split_statements)
            self.generation += 1
            paths = {migration.path for migration in self._migrations}
            self._verdicts = {p: v for p, v in self._verdicts.items() if p in paths}
            # File times are coarse (a clock tick): a change within the same tick as the
            # listing would keep this stamp, so a stamp that recent is not trusted yet.
            racy = time.time_ns() - stamp < RACY_WINDOW_NS
            self._stamp = None if racy else stamp
        return self._migrations

    def source_checksum_matches(self, migration: Migration | Repeatable, recorded: str) -> bool:
        """Whether `migration`'s file still has the checksum `recorded` (see checksum_matches).

        The answer is kept until the file's (or either file's) mtime, size, inode or ctime
        change, so checking ten thousand unchanged files reads none of them (a stat each).
        Raises OSError if a file cannot be read (FileNotFoundError if it is gone).
        """
        paths = [path for path in (migration.path, migration.down_path) if path is not None]
        infos = [os.stat(path) for path in paths]
        stamp = tuple((i.st_mtime_ns, i.st_size, i.st_ino, i.st_ctime_ns) for i in infos)
        verdict = self._verdicts.get(migration.path)
        if verdict is not None and verdict.stamp == stamp and verdict.recorded == recorded:
            return verdict.matches
        matches = checksum_matches(recorded, migration.source())
        # As for listings: a write within the same clock tick as this stat keeps the stamp.
        if time.time_ns() - max(info.st_mtime_ns for info in infos) >= RACY_WINDOW_NS:
            self._verdicts[migration.path] = _Verdict(stamp, recorded, matches)
        return matches


    def repeatables(self) -> list[Repeatable]:
        """Every repeatable migration file (`R__name.sql`, `R__name.py`), sorted by name,
        character by character (as Flyway orders them by description): the order they are
        applied in. Listed anew only when the folder changed, as migrations() is.

        Raises DuplicateRepeatable or NameNotUtf8 (PRECONDITION_FAILED replies) for a
        folder holding one that cannot be served; FileNotFoundError if the folder is gone.
        """
        stamp = os.stat(self.folder).st_mtime_ns
        if stamp != self._repeatables_stamp:
            self._repeatables = scan_repeatables(self.folder, self._split_statements)
            paths = {repeatable.path for repeatable in self._repeatables}
            self._checksums = {p: kept for p, kept in self._checksums.items() if p in paths}
            racy = time.time_ns() - stamp < RACY_WINDOW_NS  # as in migrations()
            self._repeatables_stamp = None if racy else stamp
        return self._repeatables

    def checksum(self, repeatable: Repeatable) -> str:
        """checksum_of() the file's bytes, kept until its mtime, size, inode or ctime
        change (as source_checksum_matches keeps its verdicts), so that a status reads
        an unchanged file once. Raises OSError if the file cannot be read."""
        stamp = _file_stamp(os.stat(repeatable.path))
        kept = self._checksums.get(repeatable.path)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        checksum = checksum_of(repeatable.source())
        if time.time_ns() - stamp[0] >= RACY_WINDOW_NS:
            self._checksums[repeatable.path] = (stamp, checksum)
        return checksum

    def repeatables_stamp(self) -> tuple[object, ...]:
        """What the repeatable files are now, cheaply: each one's path and stat. It changes
        when one is edited in place (which leaves the folder's mtime as it was), and never
        equals an earlier one while a file was written too recently to tell (see
        RACY_WINDOW_NS) or is gone, so that a kept status reply is not trusted then."""
        stamps: list[object] = []
        now = time.time_ns()
        for repeatable in self.repeatables():
            try:
                stamp = _file_stamp(os.stat(repeatable.path))
            except OSError:
                return (*stamps, time.monotonic_ns())
            if now - stamp[0] < RACY_WINDOW_NS:
                return (*stamps, time.monotonic_ns())
            stamps.append((repeatable.path, stamp))
        return tuple(stamps)


def _file_stamp(info: os.stat_result) -> tuple[int, int, int, int]:
    """A file's st_mtime_ns, st_size, st_ino and st_ctime_ns: what changes when it is written."""
    return info.st_mtime_ns, info.st_size, info.st_ino, info.st_ctime_ns


class _Verdict(NamedTuple):
    # Each file's st_mtime_ns, st_size, st_ino, st_ctime_ns: the up file's, the down file's.
    stamp: tuple[tuple[int, int, int, int], ...]
    recorded: str
    matches: bool


def scan(
    folder: Path,
    split_statements: Callable[[str], Iterator[str]] = sql_file.split_statements,
) -> list[Migration]:
    """The migration files of `folder`, sorted by version, their .sql files to be cut
    into statements by `split_statements`; a down file kept apart (golang-migrate's,
    Flyway's undo) is paired with its up file of the same format and version.

    Raises DuplicateVersion, VersionZero, VersionTooLarge, VersionNotWhole, DownWithoutUp
    or NameNotUtf8, naming the file(s).
    """
    found: dict[int, Migration] = {}
    downs: dict[int, tuple[str, str]] = {}  # version -> (format, path) of its down file
    with os.scandir(folder) as entries:
        for entry in entries:
            named = names.read_name(entry.name)
            if named is None or not entry.is_file():
                continue
            version = _parse_version(entry.name, named.digits)
            if named.role == names.DOWN:
                if version in downs:
                    _refuse_duplicate(version, downs[version][1], entry.path)
                downs[version] = (named.format, entry.path)
                continue
            other = found.get(version)
            if other is not None:
                _refuse_duplicate(version, other.path, entry.path)
            found[version] = Migration(version, named.name, entry.path, split_statements)
    for version in sorted(downs):
        down_format, down_path = downs[version]
        up = found.get(version)
        up_named = None if up is None else names.read_name(os.path.basename(up.path))
        if up_named is None or up_named.format != down_format:
            raise DownWithoutUp(os.path.basename(down_path), version,
                                names.up_named(os.path.basename(down_path)))
        found[version] = PairedMigration(*up, down_path)
    return [found[version] for version in sorted(found)]


def _refuse_duplicate(version: int, path: str, other: str) -> None:
    first, second = sorted((Path(path), Path(other)))
    raise DuplicateVersion(version, first, second)


def _parse_version(filename: str, digits: str) -> int:
    """The version that `digits` spell, 1 to MAX_VERSION.

    Raises NameNotUtf8, VersionNotWhole (a version that is not ASCII digits: Flyway's may
    be dotted), VersionZero or VersionTooLarge for `filename`.

    The name is checked here because os.scandir hands a name that is not UTF-8 over with
    surrogate escapes, which no reply (msgpack, JSON for stdout) can carry.
    """
    try:
        filename.encode("utf-8")
    except UnicodeEncodeError:
        raise NameNotUtf8(filename) from None
    if not (digits.isascii() and digits.isdigit()):
        raise VersionNotWhole(filename, digits)
    digits = digits.lstrip("0") or "0"
    # Counting digits first: int() refuses strings of more than 4300 digits.
    if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        raise VersionTooLarge(filename, digits)
    if digits == "0":  # `rollback to 0` means reverting every migration
        raise VersionZero(filename)
    return int(digits)


class Repeatable(NamedTuple):
    """A repeatable migration file, `R__name.sql` or `R__name.py` (Flyway's kind): it has no
    version, is applied after the versioned migrations whenever its checksum changed since
    it was last applied, and is never reverted (it has no down)."""

    name: str
    path: str
    # How a .sql file is cut into statements: the database's rules.
    split_statements: Callable[[str], Iterator[str]] = sql_file.split_statements

    @property
    def version(self) -> None:
        """None: a repeatable has no version (the wire says `"version": null`)."""
        return None

    @property
    def down_path(self) -> None:
        """None: a repeatable is one file, and has no down."""
        return None

    @property
    def kind(self) -> str:
        """The file's kind, from its suffix: "py" or "sql"."""
        return self.path.rpartition(".")[2]

    def entry(self, **fields: object) -> dict[str, object]:
        """The reply entry that names this step where a versioned one could stand (failed,
        progress): version null and the name, then `fields`."""
        return {"version": None, "name": self.name, **fields}

    def source(self) -> bytes:
        """The file's bytes; raises OSError (FileNotFoundError if it is gone)."""
        with open(self.path, "rb") as file:
            return file.read()

    def prepare(self) -> Loaded | Compiled:
        """As Migration.prepare: a .sql file's Loaded, or a .py file compiled."""
        source = self.source()
        if self.kind == "py":
            return _compiled(source, self.path)
        filename = os.path.basename(self.path)
        text = sql_file.decode(source, filename)
        statements = sql_file.parse_plain(text, filename, self.split_statements)
        return Loaded(_statements_runner(statements, "", filename), None, True,
                      checksum_of(source))

    def load(self, prepared: Loaded | Compiled | None = None) -> Loaded:
        """Read the file once and make it runnable, with the checksum of the bytes read;
        from what prepare() gave, when given.

        A .sql file is plain SQL, the whole file its up (sql_file.parse_plain); raises
        sql_file.SqlFileError naming the file and line for a `-- migrate:` directive in it,
        a statement left open, or bytes that are not UTF-8. A .py file is executed as a
        fresh module, as Migration.load does, and declares FOREIGN_KEYS, TRANSACTION and
        LOCK_TIMEOUT as a versioned one does; raises whatever it raises, or TypeError for a
        declaration of the wrong type. Either has no down. Raises OSError if the file
        cannot be read.
        """
        prepared = self.prepare() if prepared is None else prepared
        if isinstance(prepared, Loaded):
            return prepared
        filename = os.path.basename(self.path)
        module = _module_of(prepared, f"repeatable_{self.name}", self.path)
        foreign_keys, transaction = (
            _declared(module, name, filename) for name in ("FOREIGN_KEYS", "TRANSACTION")
        )
        return Loaded(_callable(module, "up"), None, foreign_keys, prepared.checksum,
                      transaction, True, _lock_timeout(module, filename))


class DuplicateRepeatable(ReplyError):
    def __init__(self, name: str, first: Path, second: Path) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"repeatable migration {name} is defined twice: {first.name} and {second.name}",
        )


def scan_repeatables(
    folder: Path,
    split_statements: Callable[[str], Iterator[str]] = sql_file.split_statements,
) -> list[Repeatable]:
    """The repeatable migration files of `folder`, sorted by name, their .sql files to be
    cut into statements by `split_statements`.

    Raises DuplicateRepeatable (R__x.sql beside R__x.py: one name, the key its last
    checksum is kept by) or NameNotUtf8, naming the file(s).
    """
    found: dict[str, Repeatable] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = REPEATABLE_FILE.match(entry.name)
            if match is None or not entry.is_file():
                continue
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                raise NameNotUtf8(entry.name) from None
            repeatable = Repeatable(match[1], entry.path, split_statements)
            other = found.get(repeatable.name)
            if other is not None:
                first, second = sorted((Path(other.path), Path(repeatable.path)))
                raise DuplicateRepeatable(repeatable.name, first, second)
            found[repeatable.name] = repeatable
    return [found[name] for name in sorted(found)]
