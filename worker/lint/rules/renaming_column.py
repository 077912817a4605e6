from pglast import ast
from pglast.enums import ObjectType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return (isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_COLUMN
            and facts.existing(tree.table_name(node.relation)))


RULE = Rule(
    id="renaming-column",
    why="Renaming a column breaks the running application at once: every query that names"
        " the old name fails until the new code is deployed everywhere.",
    fix="Add the new column, write both and backfill, move reads to the new one, then drop"
        " the old one in a later release (or keep the name, or put a view in between).",
    check=check,
)
