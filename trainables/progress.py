"""The search's console output: one readable line per trial event, instead of Ray's wide status table."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED, EPOCH, LOSS_KEY, RESUME_KEY


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class ProgressLines(tune.Callback):
    """One readable line per trial event, instead of Ray's wide status table.

    A trial's score is its best epoch, as in study.db and the selection, so a finished trial whose
    last epoch fell back shows both, and "best so far" is the best epoch of any trial that may be
    selected (not a diverged or failed one), counting the curves of trials an earlier driver ran.
    In a tournament (configs carry LOSS_KEY) a trial is named with its loss and "best so far" is its
    loss's: scores of different losses are not a ranking of configs. There `earlier` maps each loss
    to its curves and `resumed` is keyed by (loss, study trial number).
    """

    def __init__(self, total: int, max_t: int, echo: Callable[[str], None] = print,
                 earlier: Sequence[Mapping[int, float]] | Mapping[str, Sequence[Mapping[int, float]]] = (),
                 resumed: Mapping[Any, Mapping[int, float]] | None = None) -> None:
        self.total, self.max_t, self.echo = total, max_t, echo
        self.resumed = resumed or {}  # study trial -> its curve, for trials that continue from a checkpoint
        self.finished = 0
        self.started: set[str] = set()
        self.peaks: dict[str, tuple[float, int]] = {}  # trial id -> (best value, its epoch)
        by_loss = earlier if isinstance(earlier, Mapping) else {None: earlier}
        self.best: dict[str | None, float] = {  # loss (None: a single-loss run) -> best so far
            loss: max(max(c.values()) for c in curves if c) for loss, curves in by_loss.items() if any(curves)}

    def _name(self, trial: Trial) -> str:
        loss = trial.config.get(LOSS_KEY)
        return f"trial {trial.trial_id.split('_')[-1]}" + (f" ({loss})" if loss else "")

    def _peak(self, trial_id: str, value: float, epoch: int) -> None:
        if trial_id not in self.peaks or value > self.peaks[trial_id][0]:
            self.peaks[trial_id] = (value, epoch)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if trial.trial_id in self.started:  # Tune's retry after its worker died (FailureConfig)
            self.echo(f"{self._name(trial)} restarted on a new worker from its last checkpoint")
            return
        self.started.add(trial.trial_id)
        count = f"[{len(self.started)}/{self.total}]"
        resume = trial.config.get(RESUME_KEY)
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items())
                           if k not in (RESUME_KEY, LOSS_KEY))
        if resume is None:
            self.echo(f"{count} {self._name(trial)} started: {params}")
        else:
            where = "its last checkpoint" if "checkpoint" in resume else "epoch 1 (it left no checkpoint)"
            if "checkpoint" in resume:  # the epochs it ran under an earlier driver are part of its curve
                loss = trial.config.get(LOSS_KEY)
                key = resume["trial"] if loss is None else (loss, resume["trial"])
                for epoch, value in self.resumed.get(key, {}).items():
                    self._peak(trial.trial_id, value, epoch)
            self.echo(f"{count} {self._name(trial)} continues interrupted study trial {resume['trial']} "
                      f"from {where}: {params}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if result.get(SELECTION_METRIC) is not None and DIVERGED not in result:
            self._peak(trial.trial_id, result[SELECTION_METRIC], result.get(EPOCH, 0))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, None)  # Tune reports a trial that errored to on_trial_error only

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "failed")

    def _finish(self, trial: Trial, outcome: str | None) -> None:
        self.finished += 1
        result = trial.last_result or {}
        value, epochs = result.get(SELECTION_METRIC), result.get(EPOCH, 0)
        if outcome is None:
            outcome = (f"diverged in epoch {epochs}" if DIVERGED in result else
                       "finished" if epochs >= self.max_t else f"pruned at epoch {epochs}")
        shown = "n/a" if value is None else f"{value:.3f}"
        peak = self.peaks.get(trial.trial_id)
        loss = trial.config.get(LOSS_KEY)
        if peak and outcome != "failed" and DIVERGED not in result:
            self.best[loss] = max(self.best.get(loss, peak[0]), peak[0])
            if value is not None and peak[0] > value:
                shown += f", best {peak[0]:.3f} at epoch {peak[1]}"
        best = f"{self.best[loss]:.3f}" if loss in self.best else "n/a"
        self.echo(f"[{self.finished}/{self.total} done] {self._name(trial)} {outcome}: "
                  f"val R@1 {shown} (best so far {best})")
