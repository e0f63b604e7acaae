"""One driver per run directory: a second is refused while the first lives, never after it died."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import search
from results import runlock

REPO = Path(__file__).resolve().parents[1]

# Takes the lock, forks a child that outlives it (as a driver's DataLoader workers would), says
# "ready <child pid>", then sleeps until killed.
HOLDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from results.runlock import held

    with held(Path(sys.argv[1])):
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print("ready", child, flush=True)
        time.sleep(60)
""")


class Holder:
    """A driver stand-in in another process, holding run_dir's lock."""

    def __init__(self, run_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"the holder did not take the lock (exit {self.proc.wait()})"
        self.pid, self.child = self.proc.pid, int(line[1])

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no finally, no atexit
        self.proc.wait()

    def stop(self) -> None:
        self.kill()
        try:
            os.kill(self.child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.stdout.close()


@pytest.fixture
def holder(tmp_path) -> Iterator[Holder]:
    held = Holder(tmp_path)
    try:
        yield held
    finally:
        held.stop()


def test_a_second_holder_is_refused_naming_the_first(tmp_path, holder) -> None:
    with pytest.raises(runlock.RunLocked) as refused:
        with runlock.held(tmp_path):
            pass
    message = str(refused.value)
    assert f"pid {holder.pid} on " in message and str(tmp_path) in message and "another --out" in message


def test_a_killed_holder_leaves_no_lock_behind_even_while_its_forked_child_lives(tmp_path, holder) -> None:
    holder.kill()
    os.kill(holder.child, 0)  # the child still lives, with its copy of the holder's descriptors
    with runlock.held(tmp_path):
        assert f"pid {os.getpid()} on " in (tmp_path / runlock.LOCK_NAME).read_text()


def test_a_resume_while_another_driver_runs_is_refused_before_any_work(tmp_path, holder, capsys) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "study.db").write_bytes(b"the other driver's study")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}

    assert search.main(["--loss", "ms", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"pid {holder.pid} on " in err and "Wait for it to finish" in err
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before
