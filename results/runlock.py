"""One driver at a time per run directory.

Two drivers on the same --out would continue the same Optuna study (study.journal) and both retrain
and test. A driver holds an exclusive flock on RUN/run.lock for its whole life, so a second one is
refused. The OS drops a flock when its holder dies, so a killed driver never blocks a later
--resume: there is no stale lock to clear.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

LOCK_NAME = "run.lock"

_held_fds: set[int] = set()  # this process's run.lock descriptors, for _drop_in_forked_child


class RunLocked(RuntimeError):
    """Another live driver holds the run directory."""


def _drop_in_forked_child() -> None:
    """A forked child (a DataLoader worker) shares the driver's flock; point its copy at /dev/null.

    Otherwise the lock outlives a killed driver for as long as its orphaned workers do. dup2, not
    close: the child's copy of the lock's file object may still close that descriptor number.
    """
    if not _held_fds:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in _held_fds:
        os.dup2(null, fd, inheritable=False)
    os.close(null)
    _held_fds.clear()


os.register_at_fork(after_in_child=_drop_in_forked_child)


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """Hold run_dir's lock (run_dir must exist), or raise RunLocked naming the live holder."""
    path = run_dir / LOCK_NAME
    # Opened without truncating: the holder's pid and host stay readable for the refusal.
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = f.read().strip() or "one that has not written its pid yet"
            raise RunLocked(f"{run_dir} is in use by another dmltune driver ({holder}): two drivers would "
                            "continue the same study and both retrain and test. Wait for it to finish, "
                            "or give another --out.") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        f.flush()
        _held_fds.add(f.fileno())
        try:
            yield
        finally:
            _held_fds.discard(f.fileno())
