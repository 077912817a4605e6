"""What a lint rule is: an id, why what it catches is dangerous, the safe recipe, and a check.

Each rule lives in a file of its own under rules/, named as its id (`require-concurrent-
index-creation` in require_concurrent_index_creation.py), holding one `RULE = Rule(...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from pglast import ast

from worker.lint.facts import Facts


class Rule(NamedTuple):
    id: str  # kebab-case, as squawk names its rules; what `-- lint:ignore` names
    why: str  # why the statement is dangerous on a server under load
    fix: str  # the safe recipe
    # True when the statement (its parse tree), after what `facts` established, breaks it
    check: Callable[[ast.Node, Facts], bool]
