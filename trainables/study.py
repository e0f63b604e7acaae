"""The run's Optuna study: its files, its name and the user attributes each trial carries.

The searcher writes these names and the tables and report read them, so they live in one place
that imports neither Ray nor torch (the report loads it without starting any of the search's
machinery).

study.journal is the record: an Optuna JournalStorage file, one JSON line per write, which a
restarted driver replays. It replaced sqlite as the live storage because the driver asks and
tells far more cheaply through it (bench/RESULTS.md, "Cluster scale"): sqlite's cached storage
rereads every running trial on each read. The driver's writes return at once and a thread
appends and fsyncs them in batches (WriteBehindJournal): a driver that dies loses at most the
writes of the last few milliseconds, and what must wait for durability (deleting a checkpoint
the record no longer points at) waits for it. study.db is a sqlite copy for
optuna-dashboard, written when the search stage ends; a run directory from before the journal
(study.db only) is carried over into a journal the first time a driver opens it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

logger = logging.getLogger(__name__)

STUDY_NAME = "dmltune"
STUDY_FILE = "study.db"  # the sqlite copy (optuna-dashboard sqlite:///study.db)
JOURNAL_FILE = "study.journal"  # the live record
# A loss tournament (search.py --loss all) keeps one study per loss in the same record, and each of
# its trials carries its loss in its config under this key (a single-loss run's configs do not).
LOSS_KEY = "loss"
# The progress attribute ASHA and Optuna count in: the trainer's epoch. A trial continued from a
# checkpoint in a new Ray trial keeps its epoch, while Ray's training_iteration starts again at 1.
EPOCH = "epoch"
# Config key of a Ray trial that continues an interrupted study trial: {"trial": number[, "checkpoint": uri]}.
RESUME_KEY = "resume"

# User attribute linking a study trial to its Ray Tune trial (the study <-> ray/).
RAY_TRIAL_ID_ATTR = "ray_trial_id"
# Result key and user attribute holding why a trial diverged (its loss became NaN/inf).
DIVERGED = "diverged"
# User attribute: seconds the trial has run on its workers (Tune's time_total_s), summed over the
# drivers of a resumed study, so a trial's cost never counts the time between two drivers.
SECONDS_ATTR = "seconds"
# User attribute of an interrupted trial that had reported epochs but whose checkpoint is gone:
# it is closed as FAIL and its config runs again as a new trial (Optuna keeps a step's first value,
# so a rerun under the same number would mix two runs' curves). It does not count against the budget,
# and the trials table shows it as "rerun".
RERUN_ATTR = "rerun"
# User attribute: where the trial's latest checkpoint is (a local path or a storage URI).
CHECKPOINT_ATTR = "checkpoint"
# User attribute of the trial that ran the paper's defaults, the first point of a fresh study: the
# report compares the search against it. True on exactly one trial; when that trial is closed as a
# rerun (RERUN_ATTR), its tag is set to False and its rerun carries True.
PAPER_DEFAULTS_ATTR = "paper_defaults"


def study_url(run_dir: Path, file: str = STUDY_FILE) -> str:
    return f"sqlite:///{(run_dir / file).resolve()}"


def study_name(loss: str, tournament: bool) -> str:
    """The study of `loss`: a single-loss run keeps the name every earlier run used, so those resume;
    a tournament names one study per loss."""
    return f"{STUDY_NAME}-{loss}" if tournament else STUDY_NAME


class WriteBehindJournal(BaseJournalBackend):
    """An Optuna journal file whose appends return at once; a thread appends and fsyncs them in batches.

    Reads are served from memory: one driver writes a run's journal (results/runlock.py), and
    every log it wrote is in its memory already. `when_durable(fn)` runs `fn` on the writer
    thread once everything appended before it is on disk. `close()` writes what is left.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        _drop_torn_line(path)
        self._logs = list(JournalFileBackend(str(path)).read_logs(0))  # creates the file if new
        self._pending: list[str] = []  # encoded lines not yet written
        self._after: list[Callable[[], None]] = []  # to run once the lines pending now are durable
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._write, name="study-journal", daemon=True)
        self._thread.start()

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        with self._cond:
            return self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"The study journal {self.path} was closed; open the study again to write to it.")
            self._logs.extend(logs)
            self._pending.extend(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            self._cond.notify_all()

    def when_durable(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._after.append(fn)
            self._cond.notify_all()

    def flush(self) -> None:
        """Return once every log appended so far is on disk."""
        with self._cond:
            while self._pending or self._after or self._busy:
                self._cond.wait()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _write(self) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            while True:
                with self._cond:
                    while not (self._pending or self._after or self._closed):
                        self._cond.wait()
                    if self._closed and not (self._pending or self._after):
                        return
                    lines, after = self._pending, self._after
                    self._pending, self._after, self._busy = [], [], True
                try:
                    if lines:
                        f.write("".join(lines))
                        f.flush()
                        os.fsync(f.fileno())
                    for fn in after:
                        try:
                            fn()
                        except Exception:  # one failed clean-up must not stop the record
                            logger.exception("After a study journal write: %r failed", fn)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()

    def __reduce__(self) -> tuple[Any, ...]:
        # Tune pickles the searcher (and with it this storage) into its experiment snapshots, which
        # dmltune never restores from; a copy unpickled elsewhere reads the file like any journal.
        return JournalFileBackend, (str(self.path),)


def _drop_torn_line(path: Path) -> None:
    """Cut a last line a killed driver left half written: a line appended after it would make the
    journal unreadable (Optuna refuses a malformed line before the end)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def open_journal(run_dir: Path) -> WriteBehindJournal:
    """The live record's journal, carrying over a study.db-only run first (written aside and
    renamed, so an interrupted carry-over is redone rather than left half done)."""
    journal = run_dir / JOURNAL_FILE
    if not journal.exists() and (run_dir / STUDY_FILE).exists():
        aside = journal.with_name(JOURNAL_FILE + ".tmp")
        aside.unlink(missing_ok=True)
        optuna.copy_study(from_study_name=STUDY_NAME, from_storage=study_url(run_dir), to_storage=_journal(aside))
        aside.replace(journal)
    return WriteBehindJournal(journal)


def study_storage(run_dir: Path) -> JournalStorage:
    return JournalStorage(open_journal(run_dir))


def has_study(run_dir: Path) -> bool:
    return (run_dir / JOURNAL_FILE).exists() or (run_dir / STUDY_FILE).exists()


def load_study(run_dir: Path, name: str = STUDY_NAME) -> optuna.Study:
    """A study as recorded now (the journal; study.db for a run from before it), for reading:
    it works while a driver writes, and creates nothing."""
    journal = run_dir / JOURNAL_FILE
    storage = _journal(journal) if journal.exists() else study_url(run_dir)
    return optuna.load_study(study_name=name, storage=storage)


def write_dashboard_copy(run_dir: Path) -> None:
    """study.db from the journal, for optuna-dashboard: written aside, then renamed over the old copy."""
    aside = run_dir / (STUDY_FILE + ".tmp")
    aside.unlink(missing_ok=True)
    copy = optuna.storages.RDBStorage(study_url(run_dir, aside.name))
    # A copy that is renamed into place when whole needs no sync per trial (sqlite's default
    # fsyncs every commit, and Optuna commits once per trial).
    sqlalchemy.event.listen(copy.engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA synchronous=OFF"))
    copy.engine.dispose()
    record = _journal(run_dir / JOURNAL_FILE)
    for name in optuna.get_all_study_names(record):  # one study, or one per loss in a tournament
        optuna.copy_study(from_study_name=name, from_storage=record, to_storage=copy)
    copy.engine.dispose()
    os.replace(aside, run_dir / STUDY_FILE)
