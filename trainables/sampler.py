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

A finished trial never changes, so each is read once: its rank (for the good group) and its
distributions (for the multivariate search space) are folded into running results, and an ask
at 2,000 trials does not re-rank or re-intersect the whole study.
"""
from __future__ import annotations

import bisect
import copy
import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from trainables.private_api import trials_view

GOOD = 25  # TPE's largest "good" group (optuna's default_gamma caps it at 25)
HISTORY = 500  # other finished trials TPE models (with the good group and running trials: ~600-800 in all)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials TPE learns from (Optuna's include_pruned)


def _rank(trial: FrozenTrial, sign: float) -> tuple[int, float, float]:
    """Optuna's order for TPE's good group: complete trials by value, then pruned ones by the step
    they reached and their value there (smaller is better)."""
    if trial.state == TrialState.COMPLETE:
        return 0, 0.0, -sign * trial.value
    if not trial.intermediate_values:
        return 1, 1.0, 0.0
    step, value = max(trial.intermediate_values.items())
    return 1, -step, math.inf if math.isnan(value) else -sign * value  # NaN last, as Optuna ranks it


class WindowedTPESampler(optuna.samplers.TPESampler):
    """TPESampler (multivariate, constant liar as configured) whose proposals model `window(study)`.

    One sampler serves one study (as Optuna's own search-space cache does): what it learnt of the
    study's finished trials is kept between asks.
    """

    def __init__(self, *, history: int = HISTORY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history = history
        # The search space below is Optuna's multivariate one; grouped or independent TPE infers its own.
        self._intersects = kwargs.get("multivariate") is True and not kwargs.get("group")
        self._read: set[int] = set()  # numbers of the finished trials folded in below
        self._best: list[tuple[int, float, float, int]] = []  # the GOOD best (_rank, number), sorted
        self._space: dict[str, BaseDistribution] | None = None  # what every finished trial's params share

    def _read_finished(self, study: optuna.Study, finished: list[FrozenTrial]) -> None:
        """Fold the trials that finished since the last call into the good group and the search space."""
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        for t in finished:
            if t.number in self._read:
                continue
            self._read.add(t.number)
            # Ties go to the older trial, as in Optuna's stable sort of the study's trials.
            bisect.insort(self._best, (*_rank(t, sign), t.number))
            del self._best[GOOD:]
            self._space = dict(t.distributions) if self._space is None else {
                name: d for name, d in self._space.items() if t.distributions.get(name) == d}

    def window(self, study: optuna.Study) -> list[FrozenTrial]:
        """The trials (in number order) TPE models for the next proposal; every trial while few."""
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        finished = [t for t in trials if t.state != TrialState.RUNNING]
        if len(finished) <= self.history + 2 * GOOD:
            return trials
        self._read_finished(study, finished)
        keep = {best[-1] for best in self._best}
        keep.update(t.number for t in finished[-self.history:])
        return [t for t in trials if t.state == TrialState.RUNNING or t.number in keep]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Optuna's multivariate space, the parameters every finished trial drew from the same
        distribution, from each finished trial read once (Optuna's own cache rereads every trial
        since the oldest running one: the whole study once a trial is left RUNNING)."""
        if not self._intersects:
            return super().infer_relative_search_space(study, trial)
        self._read_finished(study, study.get_trials(deepcopy=False, states=FINISHED))
        return {name: copy.deepcopy(d) for name, d in sorted((self._space or {}).items()) if not d.single()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        return super().sample_relative(trials_view(study, self.window(study)), trial, search_space)
