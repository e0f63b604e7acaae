"""The run's Optuna study: its files, its name and the user attributes each trial carries.

The searcher writes these names and the tables and report read them, so they live in one place
that imports neither Ray nor torch (the report loads it without starting any of the search's
machinery).

study.journal is the record: an Optuna JournalStorage file, one appended (and fsync'd) line per
write, which a restarted driver replays. It replaced sqlite as the live storage because the
driver asks and tells far more cheaply through it (bench/RESULTS.md, "Cluster scale"): sqlite's
cached storage rereads every running trial on each read. study.db is a sqlite copy for
optuna-dashboard, written when the search stage ends; a run directory from before the journal
(study.db only) is carried over into a journal the first time a driver opens it.
"""
from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

STUDY_NAME = "dmltune"
STUDY_FILE = "study.db"  # the sqlite copy (optuna-dashboard sqlite:///study.db)
JOURNAL_FILE = "study.journal"  # the live record

# User attribute linking a study trial to its Ray Tune trial (study.db <-> ray/).
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


def _journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def study_storage(run_dir: Path) -> JournalStorage:
    """The live record a driver writes to, carrying over a study.db-only run first (written
    aside and renamed, so an interrupted carry-over is redone rather than left half done)."""
    journal = run_dir / JOURNAL_FILE
    if not journal.exists() and (run_dir / STUDY_FILE).exists():
        aside = journal.with_name(JOURNAL_FILE + ".tmp")
        aside.unlink(missing_ok=True)
        optuna.copy_study(from_study_name=STUDY_NAME, from_storage=study_url(run_dir), to_storage=_journal(aside))
        aside.replace(journal)
    return _journal(journal)


def has_study(run_dir: Path) -> bool:
    return (run_dir / JOURNAL_FILE).exists() or (run_dir / STUDY_FILE).exists()


def load_study(run_dir: Path) -> optuna.Study:
    """The study as recorded now (the journal; study.db for a run from before it), for reading:
    it works while a driver writes, and creates nothing."""
    journal = run_dir / JOURNAL_FILE
    storage = _journal(journal) if journal.exists() else study_url(run_dir)
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def write_dashboard_copy(run_dir: Path) -> None:
    """study.db from the journal, for optuna-dashboard: written aside, then renamed over the old copy."""
    aside = run_dir / (STUDY_FILE + ".tmp")
    aside.unlink(missing_ok=True)
    optuna.copy_study(from_study_name=STUDY_NAME, from_storage=_journal(run_dir / JOURNAL_FILE),
                      to_storage=study_url(run_dir, aside.name))
    os.replace(aside, run_dir / STUDY_FILE)
