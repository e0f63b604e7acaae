"""write_atomic: a file is replaced whole or not at all, and a failed write leaves nothing behind."""
from __future__ import annotations

import pytest

from trainables.atomic import write_atomic


def test_a_write_replaces_the_file_whole(tmp_path) -> None:
    path = tmp_path / "table.txt"
    path.write_text("old")
    write_atomic(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "table.txt"
    path.write_text("old")

    def half_then_fail(tmp) -> None:
        tmp.write_text("ha")
        raise KeyboardInterrupt  # a driver stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_the_file_gets_the_permissions_a_plain_write_gives(tmp_path) -> None:
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    write_atomic(atomic, lambda tmp: tmp.write_text("x"))
    assert atomic.stat().st_mode == plain.stat().st_mode
