from pglast import ast
from pglast.enums import ObjectType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return (isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_TABLE
            and facts.existing(tree.table_name(node.relation)))


RULE = Rule(
    id="renaming-table",
    why="Renaming a table breaks the running application at once: every query that names the"
        " old name fails until the new code is deployed everywhere.",
    fix="Create the new table (or a view of the old name over it), move the application to"
        " the new name, then drop the old name in a later release.",
    check=check,
)
