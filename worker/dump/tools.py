"""Running a database's own dump program (pg_dump, mysqldump) and taking its output.

The program is looked up on PATH; its password travels in its environment, never in its
argv. A program that is missing, fails or runs too long is error 22 saying which, and why.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from broker.errors import PRECONDITION_FAILED, ReplyError

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 120.0  # a dump of the schema alone; longer means something is stuck
SAID_LINES = 3  # of the program's stderr, in the error's text


def find_tool(names: Sequence[str], package: str) -> str:
    """The path of the first of `names` on PATH. Raises error 22 naming the package that
    installs it when none is there."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise ReplyError(PRECONDITION_FAILED,
                     f"a dump needs {' or '.join(names)}, which is not on PATH"
                     f" ({os.environ.get('PATH', '')!r}): install the {package} package")


def run_tool(argv: Sequence[str], environment: Mapping[str, str]) -> str:
    """The standard output of `argv`, run with `environment` added to this process's.

    Raises error 22 with the program's last lines of stderr when it exits with a status
    other than 0, and when it runs longer than TOOL_TIMEOUT_S.
    """
    name = os.path.basename(argv[0])
    log.debug("running %s", name)
    try:
        done = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=TOOL_TIMEOUT_S,
            env={**os.environ, **environment}, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ReplyError(PRECONDITION_FAILED, f"{name} ran for more than {TOOL_TIMEOUT_S:g} s"
                         " and was stopped; nothing was dumped") from None
    except OSError as exc:
        raise ReplyError(PRECONDITION_FAILED, f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()[-SAID_LINES:]
        raise ReplyError(PRECONDITION_FAILED, f"{name} failed (exit status {done.returncode}):"
                         f" {' '.join(line.strip() for line in said) or 'it said nothing'}")
    return done.stdout.decode("utf-8", "replace")
