"""The resumable search algorithm: a pruning-aware Optuna searcher and an ASHA whose rungs can be refilled.

study.journal is the record a restarted driver trusts (Ray's `Tuner.restore` brings back neither the
searcher's view of trials finished after its last snapshot nor ASHA's rungs): every epoch's
score and the path of that epoch's checkpoint go into the Optuna trial as they arrive, so a
later driver keeps every finished trial, continues each interrupted one from its last checkpoint
under its own trial number, and refills ASHA's rungs from the curves. Each trial ASHA stops is
told to Optuna as PRUNED (docs/ray-optuna.md).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
from optuna.trial import FrozenTrial, TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from trainables.config import SELECTION_METRIC, SELECTION_MODE
from trainables.private_api import adopt_trial, reopen_trial, reported_checkpoint_dir, searcher_study, searcher_trial
from trainables.slots import FreshTrialFirst
from trainables.study import CHECKPOINT_ATTR, DIVERGED, EPOCH, RAY_TRIAL_ID_ATTR, RESUME_KEY, SECONDS_ATTR

logger = logging.getLogger(__name__)


def delete_checkpoint(location: str) -> None:
    """Remove a checkpoint directory (a local path or a storage URI) the study no longer points at."""
    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def last_checkpoint(trial: FrozenTrial) -> str | None:
    """Where an interrupted study trial's latest checkpoint is, if it still exists."""
    location = trial.user_attrs.get(CHECKPOINT_ATTR)
    if not location:
        return None
    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        logger.warning("Checkpoint %s of study trial %d is gone.", location, trial.number)
        return None
    return location


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna an ASHA-stopped trial is PRUNED, and keeps the study resumable.

    Ray's OptunaSearch tells every trial that ends without error as COMPLETE with its last
    value, so a config stopped after one epoch looks like a finished one with a low score and
    TPE's model of "good" is built from mixed budgets. Optuna records a PRUNED trial's last
    intermediate value (already reported each epoch) and TPE ranks pruned trials by the step
    they reached. A trial that ran the full budget is told its best epoch's value, the number
    selection ranks it by, not its last. Each Optuna trial also records its Ray trial id (linking
    the study to ray/), the location of its latest checkpoint, and why it diverged if it did.

    `resume` are study trials an earlier driver left RUNNING: the first suggestions hand them out
    again (same trial number, same params, RESUME_KEY naming the checkpoint to continue from, if
    any), and `on_resume(ray_trial_id, curve)` lets the scheduler learn what they already reported.

    A trial keeps one checkpoint, its latest: once the study records a newer one, `retire(location)`
    is handed the one before (run_search deletes it when the record of the newer one is on disk).
    Tune's own `num_to_keep=1` would instead save Tune's whole experiment state at every checkpoint,
    a cost per result that grows with the study.
    """

    def __init__(self, *args: Any, max_t: int, checkpoint_root: str, resume: Sequence[FrozenTrial] = (),
                 on_resume: Callable[[str, Mapping[int, float]], None] | None = None,
                 retire: Callable[[str], None] = delete_checkpoint, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_t = max_t
        self.checkpoint_root = checkpoint_root.rstrip("/")  # Ray's experiment directory (path or URI)
        self._resume = list(resume)
        self._on_resume = on_resume
        self._retire = retire
        self._checkpoints: dict[str, str] = {}  # Ray trial id -> its latest checkpoint in the study
        self._last_step: dict[str, int] = {}  # Ray trial id -> last epoch reported to Optuna
        self._best: dict[str, float] = {}  # Ray trial id -> best value reported to Optuna
        self._earlier_seconds: dict[str, float] = {}  # Ray trial id -> seconds earlier drivers ran its study trial
        self._told: set[str] = set()  # Ray trial ids already told to Optuna: a told trial takes no more reports

    def suggest(self, trial_id: str) -> dict | None:
        if self._resume:
            past = self._resume.pop(0)
            adopt_trial(self, trial_id, reopen_trial(searcher_study(self), past))
            checkpoint = last_checkpoint(past)
            config = dict(past.params) | {RESUME_KEY: {"trial": past.number} | ({"checkpoint": checkpoint}
                                                                                 if checkpoint else {})}
            for step, value in past.intermediate_values.items():
                self._note(trial_id, value, step)
            self._earlier_seconds[trial_id] = past.user_attrs.get(SECONDS_ATTR, 0.0)
            if checkpoint:
                self._checkpoints[trial_id] = checkpoint
                if self._on_resume:
                    self._on_resume(trial_id, past.intermediate_values)
        else:
            config = super().suggest(trial_id)
        searcher_trial(self, trial_id).set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._told:
            return
        ot_trial = searcher_trial(self, trial_id)
        ot_trial.report(result[self.metric], result[EPOCH])
        self._note(trial_id, result[self.metric], result[EPOCH])
        self._record_seconds(trial_id, result)
        self._record_checkpoint(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._told:
            return
        result = result or {}
        step, value = result.get(EPOCH, 0), result.get(self.metric)
        ot_trial, study = searcher_trial(self, trial_id), searcher_study(self)
        if DIVERGED in result:
            ot_trial.set_user_attr(DIVERGED, result[DIVERGED])
        # Ray hands a trial's last result (the one ASHA stopped it on, or its max_t epoch) only to
        # on_trial_complete, never to on_trial_result: record it as the curve's last point too,
        # or a trial stopped at its first rung reaches Optuna with no value at all.
        if value is not None and self._last_step.get(trial_id) != step:
            ot_trial.report(value, step)
            self._note(trial_id, value, step)
        self._record_seconds(trial_id, result)
        self._record_checkpoint(trial_id, result)
        if error:  # Ray's OptunaSearch would call an errored trial that had reported COMPLETE
            study.tell(ot_trial, state=TrialState.FAIL)
        elif value is not None and step >= self.max_t and DIVERGED not in result:
            study.tell(ot_trial, self._best[trial_id])
        else:  # stopped by ASHA, diverged (last value 0), or ended before its first result: Optuna keeps the last value
            study.tell(ot_trial, state=TrialState.PRUNED)
        self._told.add(trial_id)

    def _record_seconds(self, trial_id: str, result: dict) -> None:
        if "time_total_s" in result:
            seconds = self._earlier_seconds.get(trial_id, 0.0) + result["time_total_s"]
            searcher_trial(self, trial_id).set_user_attr(SECONDS_ATTR, seconds)

    def _record_checkpoint(self, trial_id: str, result: dict) -> None:
        checkpoint = reported_checkpoint_dir(result)
        if not checkpoint:
            return
        # Already on storage: the worker uploads a checkpoint before reporting it.
        location = f"{self.checkpoint_root}/{trial_id}/{checkpoint}"
        before = self._checkpoints.get(trial_id)
        if location == before:
            return
        searcher_trial(self, trial_id).set_user_attr(CHECKPOINT_ATTR, location)
        self._checkpoints[trial_id] = location
        if before:
            self._retire(before)

    def _note(self, trial_id: str, value: float, step: int) -> None:
        self._last_step[trial_id] = step
        best = self._best.get(trial_id)
        self._best[trial_id] = value if best is None else (max if self.mode == "max" else min)(best, value)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs can be refilled with curves a previous driver saw, so a resumed study stops
    trials against the same cutoffs a single uninterrupted run would have used."""

    def __init__(self, *, max_t: int, grace_period: int, reduction_factor: int) -> None:
        if reduction_factor < 2:  # Ray's own check is an assert, and rungs need a factor that shrinks
            raise ValueError(f"ASHA's reduction factor must be at least 2 (each rung keeps 1 in that many trials), "
                             f"but got {reduction_factor}.")
        super().__init__(time_attr=EPOCH, metric=SELECTION_METRIC, mode=SELECTION_MODE, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor, brackets=1)
        self._placement = FreshTrialFirst()

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        return self._placement.choose(tune_controller.get_trials())

    def replay(self, key: str, curve: Mapping[int, float]) -> None:
        """Record a curve (epoch -> score) under `key` as if its trial had reported it live.

        Through the scheduler's public hooks in Tune's order: every epoch but the last as a result,
        the last as the trial's end (ASHA records a full-budget epoch only there).
        """
        if not curve:
            return
        past = SimpleNamespace(trial_id=key)  # ASHA reads only the trial's id
        *earlier, last = sorted(curve)
        self.on_trial_add(None, past)
        for step in earlier:
            self.on_trial_result(None, past, {EPOCH: step, SELECTION_METRIC: curve[step]})
        self.on_trial_complete(None, past, {EPOCH: last, SELECTION_METRIC: curve[last]})
