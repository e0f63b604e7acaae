"""The run's Parquet tables: one row per trial (trials.parquet), one per retrain (final.parquet).

trials.parquet is built from the Optuna study every trial was told to (trainables/study.py): it survives
a restarted driver, and each trial's per-epoch validation Recall@1 is its intermediate values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from trainables.atomic import write_atomic
from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED, LOSS_KEY, RAY_TRIAL_ID_ATTR, RERUN_ATTR, SECONDS_ATTR, load_study, study_name

STATES = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
          optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running",
          optuna.trial.TrialState.WAITING: "waiting"}


def run_trials(run_dir: Path, losses: Sequence[str], max_epochs: int) -> pd.DataFrame:
    """trials.parquet: every trial of the run's study, or of each loss's study in a tournament, with its loss."""
    tournament = len(losses) > 1
    frames = []
    for loss in losses:
        frame = trials_frame(load_study(run_dir, study_name(loss, tournament)), max_epochs)
        frame.insert(0, LOSS_KEY, loss)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


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
            **param_cells(t.params),
        })
    return pd.DataFrame(rows)


PARAM_PREFIX = "param_"  # a searched parameter's column: param_<name>


def param_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(PARAM_PREFIX)]


def param_cells(params: Mapping[str, Any]) -> dict[str, Any]:
    """A searched point as a row's param_<name> cells."""
    return {f"{PARAM_PREFIX}{k}": v for k, v in params.items()}


def row_params(row: pd.Series) -> dict[str, Any]:
    """The searched point of one trials/final row by parameter name, without the ones it lacks (NaN cells)."""
    return {k.removeprefix(PARAM_PREFIX): v for k, v in row.items() if k.startswith(PARAM_PREFIX) and pd.notna(v)}


def param_names(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix(PARAM_PREFIX) for c in param_columns(frame)]


def is_point(params: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    """Whether searched params are `point` (floats compared with np.isclose: study.db round-trips them)."""
    return params.keys() == point.keys() and all(
        np.isclose(params[k], v) if isinstance(v, float) else params[k] == v for k, v in point.items())


def write(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically, so an interrupted run never leaves a truncated table behind."""
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))
