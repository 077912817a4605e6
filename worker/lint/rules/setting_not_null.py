from pglast import ast
from pglast.enums import AlterTableType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return any(
        command.subtype == AlterTableType.AT_SetNotNull and facts.existing(table)
        and not facts.validated_not_null(table, command.name or "")
        for table, command in tree.alter_commands(node)
    )


RULE = Rule(
    id="setting-not-null",
    why="SET NOT NULL scans every row for a NULL while it holds an ACCESS EXCLUSIVE lock, unless"
        " a validated CHECK (column IS NOT NULL) already proves there is none.",
    fix="First ADD CONSTRAINT name CHECK (column IS NOT NULL) NOT VALID, then VALIDATE"
        " CONSTRAINT name in a later migration; then SET NOT NULL skips the scan (and the"
        " CHECK can be dropped).",
    check=check,
)
