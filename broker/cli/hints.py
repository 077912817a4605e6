"""What the stdio node says to a person who started it on a terminal, where it would
otherwise wait for JSON in silence.

node.py calls hint_on_terminal() in main(), on the stdio node's path only.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

STDIN_HINT = (
    "migrations-node: reading JSON requests on stdin (the stdio node); type Ctrl-D to end,"
    " or run 'migrations-node --help' for the commands"
)


def hint_on_terminal(stdin: int = 0, stderr: TextIO | None = None) -> bool:
    """Write STDIN_HINT as one line on `stderr` (sys.stderr) when `stdin` is a terminal;
    a pipe or a file, a program's input, gets nothing. Returns whether it was written.

    Never raises: a hint that cannot be written (stderr closed) is not a failure.
    """
    if not os.isatty(stdin):
        return False
    try:
        print(STDIN_HINT, file=stderr or sys.stderr, flush=True)
    except (OSError, ValueError):  # ValueError: a closed file object
        return False
    return True
