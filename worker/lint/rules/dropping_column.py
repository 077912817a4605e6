from pglast import ast
from pglast.enums import AlterTableType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return any(
        command.subtype == AlterTableType.AT_DropColumn and facts.existing(table)
        for table, command in tree.alter_commands(node)
    )


RULE = Rule(
    id="dropping-column",
    why="Dropping a column breaks the running application if any of its queries still names"
        " it (or selects * into a fixed shape), and the data is gone for good.",
    fix="Deploy code that no longer uses the column first, then drop it in a later migration;"
        " ignore this with a reason once that is so.",
    check=check,
)
