"""The lint rules, one per module of this package, each named as its rule's id.

Adding a rule is adding a file here with a `RULE = Rule(...)` (see worker/lint/rule.py);
RULES finds it. Run in the order of their ids, so findings come in the same order always.
"""

from __future__ import annotations

import importlib
import pkgutil

from worker.lint.rule import Rule


def _discover() -> dict[str, Rule]:
    """Every rule module's RULE by its id; raises ValueError for a module whose rule id is
    not its own name in kebab-case (a finding must name a rule its reader can find)."""
    found = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        rule = module.RULE
        if rule.id != module_info.name.replace("_", "-"):
            raise ValueError(f"rules/{module_info.name}.py holds rule {rule.id!r}")
        found[rule.id] = rule
    return found


RULES: dict[str, Rule] = _discover()
