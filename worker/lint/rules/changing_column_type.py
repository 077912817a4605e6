from pglast import ast
from pglast.enums import AlterTableType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return any(
        command.subtype == AlterTableType.AT_AlterColumnType and facts.existing(table)
        for table, command in tree.alter_commands(node)
    )


RULE = Rule(
    id="changing-column-type",
    why="Changing a column's type rewrites the table and its indexes under an ACCESS EXCLUSIVE"
        " lock (but for a few binary-compatible changes), and the running application may"
        " read or write values of the old type.",
    fix="Add a column of the new type, write both from the application, backfill it in"
        " batches, switch reads to it, then drop the old column in a later release.",
    check=check,
)
