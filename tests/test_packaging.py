"""The package as a user gets it: a wheel built from a copy of this tree, installed with its
dependencies into a fresh virtual environment, and run from a folder that holds nothing of
the source tree. Skipped, saying why, only when no package index answers pip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

from broker.cli.bundled import bundled_migrations
from tests.processes import alive_owner
from tests.support import PROCESS_TIMEOUT_S, PROJECT

INSTALL_TIMEOUT_S = 600  # pip fetching setuptools, pyzmq and msgpack from a slow index
README = PROJECT / "README.md"
VERSION = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
# What pip says when it reaches no index; anything else that fails is a failure.
NO_INDEX = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
)
# Left out of the copy the wheel is built from: what a clean clone does not have.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", "*.whl", "*.db", "*.db-*", "*.db.lock",
    "node_modules",  # .ci/tools: the tools .ci/run installs for the adopt tests
)


class Installed(NamedTuple):
    python: Path  # the virtual environment's interpreter
    script: Path  # its migrations-node console script
    site_packages: Path


def clean_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` without what would let the source tree or another environment in."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {name: value for name, value in env.items() if name not in drop}


def run_pip(python: Path | str, *args: str, cwd: Path) -> None:
    """`python -m pip ARGS`; skips the test when pip reaches no package index."""
    done = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                          cwd=cwd, env=clean_environment(dict(os.environ)),
                          timeout=INSTALL_TIMEOUT_S)
    if done.returncode == 0:
        return
    said = done.stdout + done.stderr
    unreached = [line.strip() for line in said.splitlines()
                 if any(sign in line for sign in NO_INDEX)]
    if unreached:
        pytest.skip(f"no package index answers `pip {' '.join(args[:2])}`: {unreached[0]}")
    pytest.fail(f"pip {' '.join(args)} exited {done.returncode}:\n{said}")


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this tree to build and install from: a build in the tree itself would
    leave build/ behind, whose stale files a later build would ship."""
    copy = tmp_path_factory.mktemp("source") / "migrations-node"
    shutil.copytree(PROJECT, copy, ignore=NOT_SOURCE)
    return copy


@pytest.fixture(scope="session")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel` builds from the copy of this tree."""
    dist = tmp_path_factory.mktemp("dist")
    run_pip(sys.executable, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), ".",
            cwd=source)
    (built,) = dist.glob("migrations_node-*.whl")
    return built


def fresh_environment(tmp_path_factory: pytest.TempPathFactory, *install: str) -> Installed:
    """A new virtual environment in which `pip install INSTALL` has run."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                   timeout=INSTALL_TIMEOUT_S)
    python = venv / "bin" / "python"
    run_pip(python, "install", "--quiet", *install, cwd=venv)
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, cwd=venv, timeout=PROCESS_TIMEOUT_S,
    ).stdout.strip()
    return Installed(python, venv / "bin" / "migrations-node", Path(site_packages))


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh virtual environment with the wheel and its dependencies installed."""
    return fresh_environment(tmp_path_factory, str(wheel))


@pytest.fixture(scope="session")
def editable(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh virtual environment with the copy of this tree installed editable, as the
    README's `pip install -e .` does."""
    return fresh_environment(tmp_path_factory, "--editable", str(source))


@pytest.fixture
def elsewhere(workspace) -> tuple[Path, dict[str, str]]:
    """A folder with nothing of the source tree in it, and an environment that does not
    reach the tree either; the workspace gives the private runtime directory, and kills
    every worker started with it when the test ends."""
    folder = workspace.root / "elsewhere"
    folder.mkdir()
    return folder, clean_environment(workspace.env)


def readme_installed_names() -> set[str]:
    """The top-level names the README says the package installs."""
    said = re.search(r"^Installed, the package puts these top-level names into site-packages:"
                     r"(.+?)\.\s", README.read_text(), re.M | re.S)
    assert said, "the README's sentence on installed top-level names is missing"
    return set(re.findall(r"`([^`]+)`", said[1]))


def readme_seed_exchange() -> tuple[str, str]:
    """The seed's migrate request the README pipes into the node, and the reply it shows."""
    lines = README.read_text().splitlines()
    asked = next(i for i, line in enumerate(lines)
                 if line.startswith("$ echo '") and '"type": "migrate"' in line)
    request = lines[asked].removeprefix("$ echo '").split("' | ", 1)[0]
    return request, lines[asked + 1]


def installed_top_level_names(installed: Installed, cwd: Path) -> set[str]:
    """The top-level names among the files the distribution's RECORD lists in site-packages
    (its .dist-info, compiled files and scripts outside site-packages left out)."""
    listing = subprocess.run(
        [str(installed.python), "-c",
         "import importlib.metadata as m; print(*m.distribution('migrations-node').files,"
         " sep='\\n')"],
        capture_output=True, text=True, check=True, cwd=cwd, timeout=PROCESS_TIMEOUT_S,
    ).stdout.split()
    names = set()
    for path in listing:
        top = path.split("/", 1)[0]
        if top in ("..", "__pycache__") or top.endswith(".dist-info"):
            continue
        names.add(top.removesuffix(".py"))
    return names


def test_the_wheel_installs_the_top_level_names_the_readme_lists_and_no_migrations(
    installed, elsewhere
):
    folder, env = elsewhere
    names = installed_top_level_names(installed, folder)
    assert names == readme_installed_names()
    assert "migrations" not in names
    assert not (installed.site_packages / "migrations").exists()
    found = subprocess.run(
        [str(installed.python), "-c",
         "import importlib.util; print(importlib.util.find_spec('migrations'))"],
        capture_output=True, text=True, cwd=folder, env=env, timeout=PROCESS_TIMEOUT_S)
    assert found.stdout == "None\n", found.stderr


def test_the_installed_command_prints_the_installed_version(installed, elsewhere):
    folder, env = elsewhere
    done = subprocess.run([str(installed.script), "--version"], capture_output=True,
                          text=True, cwd=folder, env=env, timeout=PROCESS_TIMEOUT_S)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"migrations-node {VERSION}\n", "")


def test_status_from_an_unrelated_folder_lists_the_bundled_migrations_pending(
    installed, elsewhere
):
    folder, env = elsewhere
    done = subprocess.run([str(installed.script), "status"], capture_output=True, text=True,
                          cwd=folder, env=env, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split() for line in lines[1:-1]] == [["1", "create_users", "pending"],
                                                      ["2", "add_posts_table", "pending"]]
    assert lines[-1] == "0 applied, 2 pending"
    # The worker that answered was spawned from the installed package, on its bundled folder.
    worker = alive_owner(folder / "migrations.db")
    assert worker is not None
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
    assert Path(argv[0]).parent == installed.python.parent and argv[1:3] == ["-m", "worker"]
    bundled = installed.site_packages / "migrations_node_examples"
    assert argv[argv.index("--migrations") + 1] == str(bundled)
    assert Path(f"/proc/{worker}/cwd").resolve() == installed.site_packages.resolve()


def test_the_installed_node_answers_the_seed_exchange_as_the_readme_shows(installed, elsewhere):
    folder, env = elsewhere
    request, reply = readme_seed_exchange()
    done = subprocess.run([str(installed.script)], input=request + "\n", capture_output=True,
                          text=True, cwd=folder, env=env, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reply + "\n"


def test_an_editable_install_serves_the_repository_migrations_from_an_unrelated_folder(
    editable, source, elsewhere
):
    folder, env = elsewhere
    done = subprocess.run([str(editable.script), "status"], capture_output=True, text=True,
                          cwd=folder, env=env, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 applied, 2 pending"
    # bundled_migrations() found the copy's own migrations/, through the editable finder.
    worker = alive_owner(folder / "migrations.db")
    assert worker is not None
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("--migrations") + 1] == str(source / "migrations")
    assert Path(f"/proc/{worker}/cwd").resolve() == source.resolve()
    assert not (editable.site_packages / "migrations").exists()


def test_in_a_source_checkout_the_bundled_migrations_are_the_repository_folder():
    assert bundled_migrations() == PROJECT / "migrations"


def test_a_source_checkout_without_installed_metadata_prints_its_pyproject_version(tmp_path):
    # A copy without the .egg-info an editable install leaves in the tree, run with -S (no
    # site-packages): no metadata anywhere, while node.py's own folder is still imported.
    checkout = tmp_path / "checkout"
    shutil.copytree(PROJECT, checkout, ignore=NOT_SOURCE)
    done = subprocess.run([sys.executable, "-S", str(checkout / "node.py"), "--version"],
                          capture_output=True, text=True, cwd=tmp_path,
                          timeout=PROCESS_TIMEOUT_S)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"migrations-node {VERSION} (source checkout, not installed)\n"


def test_every_package_of_the_source_tree_is_one_the_wheel_installs():
    listed = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(PROJECT).parts)
             for top in ("broker", "worker") for init in (PROJECT / top).rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
