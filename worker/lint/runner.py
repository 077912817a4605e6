"""Lint a set of migrations: parse each statement, hand it to every rule, apply the ignores.

    lint_migrations(migrations, recorder)   the files read (sources.py), then lint()
    lint(sources) -> [Finding]              in version order; facts flow from one to the next

Two entries are not rules of rules/, and read the same way: `unparsable-statement` (pglast
cannot parse it, so no rule could read it; it may be ignored, for syntax newer than the
parser's) and `invalid-lint-ignore` (an ignore comment that silences nothing: it cannot be
ignored).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pglast import parse_sql
from pglast.parser import ParseError

from worker.catalog import Migration
from worker.lint import parser
from worker.lint.facts import Facts
from worker.lint.ignores import Ignore, ignore_before
from worker.lint.recording import Recorder
from worker.lint.rules import RULES
from worker.lint.sources import Located, Source, python_source, sql_source
from worker.sql_file import NOISE, SqlFileError

UNPARSABLE = "unparsable-statement"
INVALID_IGNORE = "invalid-lint-ignore"
SHOWN_CHARS = 200  # of a statement, in a finding


class Finding(NamedTuple):
    rule: str
    file: str  # the migration's path, as the worker's folder gives it
    line: int
    why: str
    fix: str
    version: int
    statement: str

    def entry(self) -> dict[str, Any]:
        """The finding as a lint_result reply lists it."""
        return self._asdict()


def lint_migrations(
    migrations: list[Migration], recorder: Recorder
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The findings of `migrations` (in version order) as a reply lists them, a .py file's
    from what `recorder` saw its dry run execute; and, by version, why a file could not be
    read (a malformed .sql file, one gone since it was listed)."""
    sources, unreadable = [], {}
    for migration in migrations:
        try:
            if migration.kind == "sql":
                sources.append(sql_source(migration))
            else:
                sources.append(python_source(
                    migration, recorder.executed.get(migration.version, []),
                    recorder.transactional.get(migration.version, True)))
        except (OSError, SqlFileError) as exc:
            unreadable[migration.version] = f"it cannot be read: {exc}"
    return [finding.entry() for finding in lint(sources)], unreadable


def lint(sources: list[Source]) -> list[Finding]:
    """Every finding of `sources` (in version order), in the order of their statements and,
    for one statement, of the rules' ids; ignored ones left out."""
    facts = Facts()
    findings: list[Finding] = []
    reported: set[tuple[str, int]] = set()  # invalid ignores already told (a loop's line)
    for source in sources:
        facts.begin_migration(source.transactional)
        for located in source.statements:
            ignore = ignore_before(source.lines, located.line, RULES.keys() | {UNPARSABLE})
            invalid = ignore is not None and ignore.problem is not None
            if invalid and (source.path, ignore.line) not in reported:
                reported.add((source.path, ignore.line))
                findings.append(_invalid(source, located, ignore))
            silenced = ignore.rules if ignore is not None else frozenset()
            findings += _lint_statement(source, located, facts, silenced)
    return findings


def _lint_statement(
    source: Source, located: Located, facts: Facts, silenced: frozenset[str]
) -> list[Finding]:
    try:
        parsed = parse_sql(located.parseable())
    except ParseError as exc:
        if UNPARSABLE in silenced:
            return []
        return [_unparsable(source, located, exc)]
    broken: dict[str, None] = {}  # rule ids, once each: a script's parts share one line
    for raw in parsed:
        for rule in RULES.values():
            if rule.id not in silenced and rule.check(raw.stmt, facts):
                broken[rule.id] = None
        facts.learn(raw.stmt)
    return [Finding(rule_id, source.path, located.line, RULES[rule_id].why, RULES[rule_id].fix,
                    source.version, _shown(located.text)) for rule_id in broken]


def _unparsable(source: Source, located: Located, exc: ParseError) -> Finding:
    message, offset = (*exc.args, None, None)[:2]
    text = located.parseable()
    line = located.line
    if isinstance(offset, int) and located.named is None and source.path.endswith(".sql"):
        line += text.count("\n", _code_start(text), offset)
    return Finding(
        UNPARSABLE, source.path, line,
        f"{parser.version()} (PostgreSQL's own parser) cannot parse this statement"
        f" ({message}), so no rule could read it; the server will refuse it too, unless it"
        " is syntax newer than the parser knows.",
        "Correct the statement; if the server accepts it, ignore this with a reason"
        f" (`-- lint:ignore {UNPARSABLE} newer syntax`).",
        source.version, _shown(located.text),
    )


def _invalid(source: Source, located: Located, ignore: Ignore) -> Finding:
    return Finding(
        INVALID_IGNORE, source.path, ignore.line,
        f"This lint:ignore comment {ignore.problem}, so it silences nothing: an ignore names"
        " the rules it accepts and says why, for the next reader.",
        "Write `-- lint:ignore RULE[,RULE...] the reason` on the line right before the"
        " statement (`# lint:ignore ...` before the line of a .py migration that executes it),"
        f" with ids lint knows: {', '.join(RULES)}.",
        source.version, _shown(located.text),
    )


def _code_start(text: str) -> int:
    match = NOISE.match(text)
    return match.end() if match else 0


def _shown(text: str) -> str:
    """The statement without the comments and spaces around it, cut for a reply."""
    code = text[_code_start(text):].strip()
    return code if len(code) <= SHOWN_CHARS else code[:SHOWN_CHARS] + "..."
