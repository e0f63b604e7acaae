"""The run's Parquet tables: one row per trial (trials.parquet), one per retrain (final.parquet).

trials.parquet is built from study.db, the Optuna study every trial was told to: it survives
a restarted driver, and each trial's per-epoch validation Recall@1 is its intermediate values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED, RAY_TRIAL_ID_ATTR, RERUN_ATTR, SECONDS_ATTR, STUDY_NAME, study_url

STATES = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
          optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running",
          optuna.trial.TrialState.WAITING: "waiting"}


def load_study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=study_url(run_dir))


def trials_frame(study: optuna.Study, max_epochs: int) -> pd.DataFrame:
    """One row per trial: number, state, epochs run, the validation curve, its best value, params."""
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False):
        curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        rows.append({
            "number": t.number,
            "ray_trial_id": t.user_attrs.get(RAY_TRIAL_ID_ATTR),
            "state": "rerun" if RERUN_ATTR in t.user_attrs else STATES.get(t.state, t.state.name.lower()),
            # Why a trial whose loss turned NaN/inf ended (the trainer's message), else None.
            DIVERGED: t.user_attrs.get(DIVERGED),
            "epochs": len(curve),
            "full_budget": len(curve) >= max_epochs,
            f"best_{SELECTION_METRIC}": max(curve) if curve else None,
            "best_epoch": (curve.index(max(curve)) + 1) if curve else None,
            f"{SELECTION_METRIC}_curve": curve,
            "seconds": t.user_attrs.get(SECONDS_ATTR),  # on its workers, over every driver
            **{f"param_{k}": v for k, v in t.params.items()},
        })
    return pd.DataFrame(rows)


def param_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("param_")]


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials selection may choose, in its order: by validation Recall@1, full-budget trials first.

    A pruned trial never showed how it does at the full schedule, so it ranks below every trial that
    reached it. Failed and unfinished trials, and trials whose loss diverged within the search budget
    (their retrain would too), are left out. The report shows this rank, so it is the selection's.
    """
    best = f"best_{SELECTION_METRIC}"
    usable = trials[trials["state"].isin(["complete", "pruned"]) & trials[best].notna() & trials[DIVERGED].isna()]
    return usable.sort_values(["full_budget", best, "number"], ascending=[False, False, True])


def select_top(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k best trials in `ranked` order (a pruned trial only when fewer than k ran the full budget)."""
    order = ranked(trials)
    if order.empty:
        raise RuntimeError("No trial can be selected: every trial failed, diverged or is unfinished. "
                           "See the trial logs under the run directory's ray/ folder.")
    return order.head(k)


def write(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically, so an interrupted run never leaves a truncated table behind."""
    tmp = path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
