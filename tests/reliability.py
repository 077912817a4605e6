"""RELIABILITY.md: one table of faults and hostile inputs, and a section of figures per run.

Each tool that tries something on purpose (the soak, later the fuzzers and the hostile-file
tests) owns its rows, named by their first two cells (what was tried, on which backend), and
its sections, named by a key; `update()` replaces those and keeps everyone else's:

    | fault or input | tried | backend | lost | doubled | wrong | half-applied | reproduce |
    |---|---|---|---|---|---|---|---|
    | <what>         | ...   | SQLite  | 0    | 0       | 0     | 0            | `command` |

    <!-- section:KEY -->
    ## ... figures, machine, date ...
    <!-- /section:KEY -->
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = ("fault or input", "tried", "backend", "lost", "doubled", "wrong", "half-applied",
           "reproduce")
HEADER = "| " + " | ".join(COLUMNS) + " |"
RULE = "|" + "---|" * len(COLUMNS)
INTRO = """# Reliability

What this project was put through on purpose, and what came of it: each kind of fault or
hostile input, how many were tried, on which backend, and how many replies were **lost**
(a request never answered), **doubled** (answered twice, or a migration applied twice),
**wrong** (a reply the README's contract does not allow at that moment, replies out of
order, a bad exit status) and how many migrations were left **half-applied** (a table
without its tracking row or the reverse, a table missing rows its migration inserted). Each
row names the command that reproduces it; the sections below the table give the machine,
the date and every figure of the run that filled it.
"""


def update(path: Path, rows: list[list[str]], sections: dict[str, str]) -> None:
    """Write `rows` into the table (replacing rows with the same first two cells, others
    appended) and each section between its markers (appended the first time)."""
    text = path.read_text() if path.exists() else INTRO + "\n" + HEADER + "\n" + RULE + "\n"
    lines = text.splitlines()
    start = lines.index(HEADER) + 2
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    table = {_key(line): line for line in lines[start:end]}
    for row in rows:
        line = "| " + " | ".join(row) + " |"
        table[_key(line)] = line
    text = "\n".join([*lines[:start], *table.values(), *lines[end:]]) + "\n"
    for key, body in sections.items():
        opening, closing = f"<!-- section:{key} -->", f"<!-- /section:{key} -->"
        block = f"{opening}\n{body.strip()}\n{closing}"
        if opening in text:
            before, _, rest = text.partition(opening)
            text = before + block + rest.partition(closing)[2]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _key(line: str) -> tuple[str, str]:
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return cells[0], cells[2] if len(cells) > 2 else ""
