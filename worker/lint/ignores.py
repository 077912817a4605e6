"""`-- lint:ignore RULE[,RULE...] reason`: the comment that accepts a finding, on the line
right before the statement (`# lint:ignore ...` before the line of a .py migration that
executes it). A reason is required: an ignore without one, or naming no rule lint knows,
silences nothing and is itself reported (see runner.INVALID_IGNORE).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NamedTuple

COMMENT = re.compile(
    r"^\s*(?:--|#)\s*lint:ignore\b[ \t]*(?P<rules>\S*)[ \t]*(?P<reason>.*?)\s*$")


class Ignore(NamedTuple):
    line: int  # the comment's line
    rules: frozenset[str]  # the rule ids it silences; empty when it is invalid
    problem: str | None  # why it silences nothing; None for a valid one


def ignore_before(lines: list[str], line: int, known: Collection[str]) -> Ignore | None:
    """The ignore comment on the line before `line` (1-based) of a file's `lines`, or None."""
    if line < 2 or line - 2 >= len(lines):
        return None
    match = COMMENT.match(lines[line - 2])
    if match is None:
        return None
    named = [rule for rule in match["rules"].split(",") if rule]
    unknown = [rule for rule in named if rule not in known]
    if not named:
        problem = "names no rule"
    elif unknown:
        problem = f"names {', '.join(unknown)}, which no rule of lint is"
    elif not match["reason"]:
        problem = "gives no reason"
    else:
        return Ignore(line - 1, frozenset(named), None)
    return Ignore(line - 1, frozenset(), problem)
