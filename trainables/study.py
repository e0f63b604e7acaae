"""study.db, the run's Optuna study: its file, its name and the user attributes each trial carries.

The searcher writes these names and the tables and report read them, so they live in one place
that imports neither Ray nor torch (the report loads it without starting any of the search's
machinery). study.db is the record a restarted driver trusts; optuna-dashboard opens it as is.
"""
from __future__ import annotations

from pathlib import Path

import optuna

STUDY_NAME = "dmltune"
STUDY_FILE = "study.db"
# A loss tournament (search.py --loss all) keeps one study per loss in the same study.db, and each of
# its trials carries its loss in its config under this key (a single-loss run's configs do not).
LOSS_KEY = "loss"

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


def study_name(loss: str, tournament: bool) -> str:
    """The study of `loss` in study.db: a single-loss run keeps the name every earlier run used, so
    those resume; a tournament names one study per loss."""
    return f"{STUDY_NAME}-{loss}" if tournament else STUDY_NAME


def study_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"


def study_storage(run_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(study_url(run_dir))
