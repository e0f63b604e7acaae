"""The test ledger: an append-only JSONL file, one entry per test evaluation
(docs/protocol.md#test-once-and-the-ledger).

The test set may be looked at once per study. Appends take an exclusive file lock and are
fsync'ed, so two processes cannot both pass the "not yet tested" check, and a crash cannot
leave half an entry that hides a look at the test set.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from results.console import recorded_text

LEDGER_NAME = "test_ledger.jsonl"


class TestAlreadyRecorded(RuntimeError):
    """A second look at the test set of a study that already has its result."""

    def __init__(self, path: Path, entries: list[dict[str, Any]], recorded: str = "") -> None:
        self.path, self.entries = path, entries
        first = entries[0].get("time", "an earlier run")
        super().__init__(
            f"The test set of this study was already evaluated on {first} ({len(entries)} entries in {path}). "
            "A second look would let the test set influence choices, which is the leak dmltune exists "
            "to prevent. The recorded result stands (--resume prints it); start a new study (a new --out) "
            "to test a new choice." + (f"\nRecorded result (Recall in %):\n{recorded}" if recorded else "")
        )


def refuse_if_tested(path: Path, entries: list[dict[str, Any]] | None = None) -> None:
    """Refuse a second look at the test set: raise TestAlreadyRecorded, showing the result that stands,
    if the ledger at `path` (or `entries`, read from it under its lock) holds an evaluation."""
    entries = read(path) if entries is None else entries
    if entries:
        raise TestAlreadyRecorded(path, entries, recorded_text(entries))


def read(path: Path) -> list[dict[str, Any]]:
    """Every entry, in order; a missing ledger is an empty one."""
    if not path.exists():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[list[dict[str, Any]]]:
    """Hold the ledger's lock; yields the entries already recorded (re-read under the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield read(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append(path: Path, *entries: dict[str, Any]) -> None:
    """Append entries durably in one write; call while holding `locked(path)`."""
    with path.open("a") as f:
        f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        f.flush()
        os.fsync(f.fileno())
