from pglast import ast

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return any(facts.existing(table) for table in tree.dropped_tables(node))


RULE = Rule(
    id="dropping-table",
    why="Dropping a table breaks the running application if any of its queries still names"
        " it, and the data is gone for good.",
    fix="Deploy code that no longer uses the table first, then drop it in a later migration;"
        " ignore this with a reason once that is so.",
    check=check,
)
