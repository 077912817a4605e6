"""The other tools themselves, where they can be had: dbmate (npm's package ships a static
binary) and sql-migrate (a Debian package). .ci/run installs them when it can; a test that
does not find one skips, saying where it looked and how to install it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import PROJECT

# Where `.ci/run` puts npm's dbmate: `npm install --prefix .ci/tools dbmate`.
NPM_PREFIX = PROJECT / ".ci" / "tools"
DBMATE_IN_PREFIX = NPM_PREFIX / "node_modules" / ".bin" / "dbmate"

# How to get each tool, for a skipped test's reason and the benchmark's "not installed" rows.
INSTALL = {
    "dbmate": f"npm install --prefix {NPM_PREFIX} dbmate",
    "sql-migrate": "apt-get install -y sql-migrate (Debian's package)",
}


def find(tool: str) -> Path | None:
    """`tool` on the PATH, or in .ci/tools' npm bin folder (where dbmate lands); None if in
    neither."""
    found = shutil.which(tool) or shutil.which(tool, path=str(DBMATE_IN_PREFIX.parent))
    return None if found is None else Path(found)


def dbmate() -> Path:
    """dbmate on the PATH or in .ci/tools; skips the test when it is in neither."""
    found = find("dbmate")
    if found is None:
        pytest.skip(f"dbmate is not installed (not on the PATH, not in {DBMATE_IN_PREFIX}):"
                    f" {INSTALL['dbmate']}")
    return found


def go_binary(found: Path) -> Path:
    """The Go program `found` runs. npm's dbmate is a node launcher (dist/cli.js) that
    spawns the binary of its platform's package, node_modules/@dbmate/<platform>/bin/dbmate
    (npm installs only the one for this machine); anything else is the program itself."""
    launcher = found.resolve()
    if launcher.suffix != ".js":
        return found
    node_modules = launcher.parents[2]  # node_modules/dbmate/dist/cli.js
    return next(iter(sorted(node_modules.glob("@dbmate/*/bin/dbmate"))), found)


def sql_migrate() -> Path:
    """sql-migrate on the PATH (or in .ci/tools); skips the test when it is not there."""
    found = find("sql-migrate")
    if found is None:
        pytest.skip(f"sql-migrate is not installed (not on the PATH): {INSTALL['sql-migrate']}")
    return found
