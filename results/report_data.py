"""The report's data: one run directory read once (config.json, the study, the ledger, final.parquet)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from results import ledger, tables
from results.console import ledger_frame
from spaces import OptimiserDefaults, default_config
from trainables.run_config import RunConfig
from trainables.study import DIVERGED, PAPER_DEFAULTS_ATTR, has_study


@dataclass
class Run:
    """Everything the report shows, read once from the run directory."""

    dir: Path
    config: dict[str, Any]  # config.json: versions, code, dataset fingerprint, splits
    cmd: RunConfig  # config.json's run settings
    study: optuna.Study
    trials: pd.DataFrame  # tables.trials_frame, plus the state the report shows ("shown", see shown_states)
    entries: list[dict[str, Any]]
    tested: pd.DataFrame | None  # the ledger's entries as console.ledger_frame rows; None before the test stage
    final: pd.DataFrame | None  # final.parquet (retrain timings); None before the test stage
    defaults_trial: int | None  # the trial that ran the paper's defaults
    selected: list[int]  # trial numbers retrained and tested, by rank; empty before the test stage


class ReportError(RuntimeError):
    """The directory holds nothing to report on; the message says what is missing."""


def load(run_dir: Path) -> Run:
    config_path = run_dir / "config.json"
    if not config_path.exists() or not has_study(run_dir):
        raise ReportError(f"{run_dir} is not a dmltune run directory (config.json and study.journal expected); "
                          "give the --out of a run.")
    config = json.loads(config_path.read_text())
    try:
        cmd = RunConfig.from_json(config["command"])
    except ValueError as err:
        raise ReportError(f"{config_path}: {err}") from None
    study = tables.load_study(run_dir)
    trials = tables.trials_frame(study, cmd.max_epochs)
    if trials.empty:
        raise ReportError(f"{run_dir} has no trials yet; continue it with search.py --resume --out {run_dir}.")
    trials["shown"] = shown_states(trials)
    entries = ledger.read(run_dir / ledger.LEDGER_NAME)
    tested = ledger_frame(entries) if entries else None
    configs = tested.drop_duplicates("config_rank").sort_values("config_rank") if tested is not None else None
    final_path = run_dir / "final.parquet"
    return Run(dir=run_dir, config=config, cmd=cmd, study=study, trials=trials, entries=entries, tested=tested,
               final=pd.read_parquet(final_path) if final_path.exists() else None,
               defaults_trial=defaults_trial(study, cmd),
               selected=[] if configs is None else [int(t) for t in configs["trial_number"]])


def shown_states(trials: pd.DataFrame) -> pd.Series:
    """Each trial's state as the report shows it: Optuna's, except that a diverged trial (told to Optuna as
    PRUNED, its reason in the `diverged` column) is "diverged", and running or waiting ones are "unfinished"."""
    state = trials["state"].replace({"running": "unfinished", "waiting": "unfinished"})
    return state.mask(trials[DIVERGED].notna(), "diverged")


def defaults_trial(study: optuna.Study, cmd: RunConfig) -> int | None:
    """The first trial tagged in the study as the paper's defaults (PAPER_DEFAULTS_ATTR).

    A study written before the tag existed has none; there the first trial whose params equal the
    defaults is taken (the search enqueues them first).
    """
    trials = study.get_trials(deepcopy=False)
    if tagged := [t.number for t in trials if t.user_attrs.get(PAPER_DEFAULTS_ATTR) is True]:
        return tagged[0]
    defaults = default_config(cmd.loss, OptimiserDefaults(lr=cmd.lr))
    for t in trials:
        if tables.is_point(t.params, defaults):
            return t.number
    return None
