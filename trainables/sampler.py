"""TPE whose cost per proposal stops growing with the study: it models a bounded window of trials.

Optuna's TPE rebuilds its two densities from every trial at each ask, so a proposal at 2,000
trials costs ~10x one at 100 (bench/RESULTS.md, "Cluster scale"), and with hundreds of slots the
driver spends its time proposing. The window keeps what decides TPE's proposals:
- the trials TPE would put in its "good" group: at most 25 (default gamma: 10 % of the finished
  trials, capped at 25), the best complete trials first, then the pruned ones that got furthest
  and scored best there (Optuna's order). The window holds the first 25 in that order, and holds
  over 250 finished trials, so its good group is exactly the one the whole study would give;
- every running trial (constant liar counts them as bad, so parallel proposals spread out);
- the `history` most recent other finished trials, the rest of the "bad" group. TPE already
  weighs older trials of that group down (to 1/n for the oldest), so the oldest drop out first.
"""
from __future__ import annotations

import heapq
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from trainables.private_api import trials_view

GOOD = 25  # TPE's largest "good" group (optuna's default_gamma caps it at 25)
HISTORY = 500  # other finished trials TPE models (with the good group and running trials: ~600-800 in all)


def _rank(trial: FrozenTrial, sign: float) -> tuple[int, float, float]:
    """Optuna's order for TPE's good group: complete trials by value, then pruned ones by the step
    they reached and their value there (smaller is better)."""
    if trial.state == TrialState.COMPLETE:
        return 0, 0.0, -sign * trial.value
    if not trial.intermediate_values:
        return 1, 1.0, 0.0
    step, value = max(trial.intermediate_values.items())
    return 1, -step, -sign * value


class WindowedTPESampler(optuna.samplers.TPESampler):
    """TPESampler (multivariate, constant liar as configured) whose proposals model `window(study)`."""

    def __init__(self, *, history: int = HISTORY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        self._ranks: dict[int, tuple[int, float, float]] = {}  # finished trial number -> _rank (it never changes)

    def window(self, study: optuna.Study) -> list[FrozenTrial]:
        """The trials (in number order) TPE models for the next proposal; every trial while few."""
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        finished = [t for t in trials if t.state != TrialState.RUNNING]
        if len(finished) <= self.history + 2 * GOOD:
            return trials
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        for t in finished:
            if t.number not in self._ranks:
                self._ranks[t.number] = _rank(t, sign)
        keep = {t.number for t in heapq.nsmallest(GOOD, finished, key=lambda t: self._ranks[t.number])}
        keep.update(t.number for t in finished[-self.history:])
        return [t for t in trials if t.state == TrialState.RUNNING or t.number in keep]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        return super().sample_relative(trials_view(study, self.window(study)), trial, search_space)
