"""The next migration file prepared while the step before it commits (worker/ahead.py): each
step gets what was read and compiled for it, in order, a file that cannot be compiled fails
its own step and no other, and the preparing thread ends with its series."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.test_engine import Node, outcome
from worker.ahead import Ahead
from worker.catalog import Catalog, checksum_of

THREAD = "prepare-ahead"


def folder_of(tmp_path: Path, sources: dict[str, str]) -> Catalog:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, source in sources.items():
        (folder / name).write_text(source)
    return Catalog(folder)


def table(name: str) -> str:
    return f'def up(db):\n    db.execute("CREATE TABLE {name} (id INTEGER)")\n'


def preparing_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD]


def join_preparing_threads() -> None:
    """Wait for every preparing thread to end (each is told to when its series ends)."""
    for thread in preparing_threads():
        thread.join(timeout=60)
    assert not preparing_threads(), "a preparing thread outlived its series"


def test_each_step_gets_the_file_prepared_for_it_in_order(tmp_path: Path) -> None:
    catalog = folder_of(tmp_path, {f"000{i}_t{i}.py": table(f"t{i}") for i in range(1, 5)})
    migrations = catalog.migrations()
    ahead = Ahead(migrations)
    try:
        for migration in migrations:
            loaded = ahead.load(migration)
            assert loaded.checksum == checksum_of(Path(migration.path).read_bytes())
            assert loaded.up is not None and loaded.up.__module__ == (
                f"migration_{migration.version}_{migration.name}")
            ahead.prepare_next()
            ahead.prepare_next()  # a step tried again commits twice: still one ahead
    finally:
        ahead.close()
    join_preparing_threads()


def test_a_step_taken_out_of_order_is_loaded_on_the_spot(tmp_path: Path) -> None:
    catalog = folder_of(tmp_path, {f"000{i}_t{i}.py": table(f"t{i}") for i in range(1, 4)})
    first, second, third = catalog.migrations()
    ahead = Ahead([first, second, third])
    try:
        ahead.load(first)
        ahead.prepare_next()  # the second is being prepared
        assert ahead.load(third).checksum == checksum_of(Path(third.path).read_bytes())
        assert ahead.load(second).checksum == checksum_of(Path(second.path).read_bytes())
    finally:
        ahead.close()
    join_preparing_threads()


def test_a_file_that_cannot_compile_fails_when_its_step_is_taken(tmp_path: Path) -> None:
    catalog = folder_of(tmp_path, {"0001_a.py": table("a"), "0002_b.py": "def up(db)\n"})
    first, broken = catalog.migrations()
    ahead = Ahead([first, broken])
    try:
        ahead.load(first)
        ahead.prepare_next()  # prepares the broken file: raises nothing here
        with pytest.raises(SyntaxError, match="expected ':'"):
            ahead.load(broken)
    finally:
        ahead.close()
    join_preparing_threads()


def test_a_migrate_that_fails_halfway_keeps_the_steps_before_and_ends_its_thread(
    sqlite_node: Node,
) -> None:
    sqlite_node.table_migration("0001_one.py", "one")
    sqlite_node.write("0002_broken.py", "def up(db)\n")
    sqlite_node.table_migration("0003_three.py", "three")

    body = outcome(lambda: sqlite_node.engine().migrate(b"m1"))

    assert body["failed"]["version"] == 2
    assert body["failed"]["error"].startswith("SyntaxError: expected ':'")
    assert sqlite_node.db.versions() == [1]
    join_preparing_threads()
