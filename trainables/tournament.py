"""A loss tournament under one Tuner: one Optuna searcher and one ASHA per loss behind Tune's single slots.

Tune takes one searcher and one scheduler. `TournamentSearch` holds a resumable, pruning-aware Optuna
searcher per loss (each with its own study, paper defaults first, its own budget) and hands out
their suggestions in turn, tagging each config with its loss (LOSS_KEY), so one warm trial actor
serves every loss (reuse_actors) and start-up is paid once per slot, not once per loss.
`PerLossASHA` keeps one ASHA per loss and routes each trial event by that tag: a trial is compared
only with trials of its own loss, whose validation scores live on their own scale.
"""
from __future__ import annotations

import collections
import pickle
from collections.abc import Mapping
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from trainables.config import SELECTION_METRIC, SELECTION_MODE
from trainables.searcher import PruningAwareOptunaSearch, ResumableASHA
from trainables.slots import FreshTrialFirst
from trainables.study import LOSS_KEY


def _pickle_state(obj: Any, path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj.__dict__, f)


def _unpickle_state(obj: Any, path: str) -> None:
    with open(path, "rb") as f:
        obj.__dict__.update(pickle.load(f))


class TournamentSearch(Searcher):
    """Suggest for each loss in turn (round-robin over the losses with budget left); route results by trial.

    Turn-taking keeps the losses' progress even: the first wave runs the paper defaults of as many
    losses as there are slots, and an interrupted tournament has spent about the same share of
    every loss's budget. `budgets[loss]` is what that loss still may propose (its --trials minus
    the trials earlier drivers finished); a loss with none left is not asked again.
    """

    def __init__(self, searchers: Mapping[str, PruningAwareOptunaSearch], budgets: Mapping[str, int]) -> None:
        super().__init__(metric=SELECTION_METRIC, mode=SELECTION_MODE)
        unknown = set(budgets) - set(searchers)
        if unknown:
            raise ValueError(f"Budgets for losses without a searcher: {sorted(unknown)}; give a searcher for each.")
        self._searchers = dict(searchers)
        self._left = {loss: budgets.get(loss, 0) for loss in searchers}
        self._turns = collections.deque(loss for loss in searchers if self._left[loss] > 0)
        self._loss_of: dict[str, str] = {}  # Ray trial id -> its loss

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self._turns:
            return Searcher.FINISHED
        loss = self._turns.popleft()
        config = self._searchers[loss].suggest(trial_id)
        self._left[loss] -= 1
        if self._left[loss] > 0:
            self._turns.append(loss)
        self._loss_of[trial_id] = loss
        return {**config, LOSS_KEY: loss}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._searchers[self._loss_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._searchers[self._loss_of[trial_id]].on_trial_complete(trial_id, result, error=error)

    def save(self, checkpoint_path: str) -> None:
        _pickle_state(self, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        _unpickle_state(self, checkpoint_path)


class PerLossASHA(FIFOScheduler):
    """One ResumableASHA per loss; every trial event goes to the ASHA of the trial's loss (its LOSS_KEY).

    Which pending trial runs next is not a per-loss question: as under ResumableASHA (FreshTrialFirst).
    Curves an earlier driver saw are replayed into the loss's own ResumableASHA before it is handed in.
    """

    def __init__(self, schedulers: Mapping[str, ResumableASHA]) -> None:
        super().__init__()
        self._by_loss = dict(schedulers)
        self._placement = FreshTrialFirst()
        self._metric = SELECTION_METRIC

    def _of(self, trial: Trial) -> ResumableASHA:
        loss = trial.config.get(LOSS_KEY)
        if loss not in self._by_loss:
            raise ValueError(f"Trial {trial.trial_id} has loss {loss!r} in its config, but this tournament "
                             f"schedules {sorted(self._by_loss)}.")
        return self._by_loss[loss]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return all([s.set_search_properties(metric, mode, **spec) for s in self._by_loss.values()])

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        return self._placement.choose(tune_controller.get_trials())

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{loss}: {s.debug_string()}" for loss, s in self._by_loss.items())

    def save(self, checkpoint_path: str) -> None:
        _pickle_state(self, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        _unpickle_state(self, checkpoint_path)

