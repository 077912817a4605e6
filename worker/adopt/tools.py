"""The tools adopt reads, by the name `--from` takes, and how to tell their tables apart."""

from __future__ import annotations

from types import ModuleType

from broker.kinds import ADOPT_FROM
from worker.adopt import dbmate, flyway, golang_migrate, goose, sql_migrate

TOOLS: dict[str, ModuleType] = {
    tool.NAME: tool for tool in (golang_migrate, goose, flyway, sql_migrate, dbmate)
}
assert tuple(TOOLS) == ADOPT_FROM, "broker/kinds.py names them all, in this order"


def recognize(table: str, columns: list[str]) -> ModuleType | None:
    """The tool whose tracking table `table` is, by its name and columns; None if none."""
    shape = frozenset(column.lower() for column in columns)
    return next((tool for tool in TOOLS.values()
                 if table == tool.TABLE and tool.recognizes(shape)), None)


def described(table: str, columns: list[str]) -> str:
    """`golang-migrate's tracking table (version, dirty)`, or `another program's table
    (id, name)` for a shape no tool has."""
    tool = recognize(table, columns)
    owner = "another program's table" if tool is None else f"{tool.NAME}'s tracking table"
    return f"{owner} ({', '.join(columns) or 'no columns'})"
