"""The search's progress lines score a trial as study.db and the selection do: by its best epoch."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from trainables.config import SELECTION_METRIC
from trainables.progress import ProgressLines
from trainables.study import DIVERGED, EPOCH, LOSS_KEY, RESUME_KEY


def _run(progress: ProgressLines, trial_id: str, curve: dict[int, float], config: dict[str, Any] | None = None,
         **last: Any) -> None:
    """Feed one trial's results to the callback as Tune does, then end it."""
    trial = SimpleNamespace(trial_id=trial_id, config=config or {"lr": 0.001}, last_result={})
    progress.on_trial_start(0, [], trial)
    for epoch, value in curve.items():
        trial.last_result = {SELECTION_METRIC: value, EPOCH: epoch, **last}
        progress.on_trial_result(0, [], trial, trial.last_result)
    progress.on_trial_complete(0, [], trial)


def test_a_finished_trial_shows_its_best_epoch_and_best_so_far_counts_it() -> None:
    lines: list[str] = []
    progress = ProgressLines(total=2, max_t=4, echo=lines.append)
    _run(progress, "a", {1: 0.6})  # pruned at its last, best epoch
    _run(progress, "b", {1: 0.5, 2: 0.9, 3: 0.8, 4: 0.7})
    assert lines[1] == "[1/2 done] trial a pruned at epoch 1: val R@1 0.600 (best so far 0.600)"
    assert lines[3] == "[2/2 done] trial b finished: val R@1 0.700, best 0.900 at epoch 2 (best so far 0.900)"


def test_a_diverged_trial_does_not_count_as_best_so_far() -> None:
    lines: list[str] = []
    progress = ProgressLines(total=2, max_t=4, echo=lines.append)
    _run(progress, "a", {1: 0.4})
    trial = SimpleNamespace(trial_id="b", config={}, last_result={SELECTION_METRIC: 0.95, EPOCH: 1})
    progress.on_trial_result(0, [], trial, trial.last_result)
    trial.last_result = {SELECTION_METRIC: 0.0, EPOCH: 2, DIVERGED: "loss is nan"}  # as run_trial reports it
    progress.on_trial_result(0, [], trial, trial.last_result)
    progress.on_trial_complete(0, [], trial)
    assert lines[-1] == "[2/2 done] trial b diverged in epoch 2: val R@1 0.000 (best so far 0.400)"


def test_earlier_drivers_curves_count_toward_best_so_far_and_a_continued_trial_keeps_its_epochs() -> None:
    lines: list[str] = []
    # Study trial 4 ran epoch 1 under the driver that died and continues here from that checkpoint.
    progress = ProgressLines(total=1, max_t=3, echo=lines.append, earlier=[{1: 0.3, 2: 0.7}, {}],
                             resumed={4: {1: 0.8}})
    _run(progress, "c", {2: 0.6, 3: 0.65}, config={"lr": 0.001, RESUME_KEY: {"trial": 4, "checkpoint": "ckpt"}})
    assert lines[0].startswith("[1/1] trial c continues interrupted study trial 4 from its last checkpoint")
    assert lines[-1] == "[1/1 done] trial c finished: val R@1 0.650, best 0.800 at epoch 1 (best so far 0.800)"
    fresh = ProgressLines(total=1, max_t=3, echo=lines.append, earlier=[{1: 0.3, 2: 0.7}])
    _run(fresh, "d", {1: 0.5})
    assert lines[-1].endswith("(best so far 0.700)")


def test_a_tournament_names_each_trials_loss_and_keeps_best_so_far_per_loss() -> None:
    lines: list[str] = []
    progress = ProgressLines(total=3, max_t=3, echo=lines.append, earlier={"ms": [{1: 0.5}], "triplet": []},
                             resumed={("triplet", 0): {1: 0.95}})
    _run(progress, "a", {1: 0.9}, config={"lr": 0.001, LOSS_KEY: "triplet"})
    _run(progress, "b", {1: 0.4}, config={"lr": 0.001, LOSS_KEY: "ms"})
    _run(progress, "c", {2: 0.6}, config={"lr": 0.001, LOSS_KEY: "triplet",
                                          RESUME_KEY: {"trial": 0, "checkpoint": "ckpt"}})
    assert lines[0] == "[1/3] trial a (triplet) started: lr=0.001"
    assert lines[1] == "[1/3 done] trial a (triplet) pruned at epoch 1: val R@1 0.900 (best so far 0.900)"
    assert lines[3] == "[2/3 done] trial b (ms) pruned at epoch 1: val R@1 0.400 (best so far 0.500)"
    assert lines[5].endswith("trial c (triplet) pruned at epoch 2: val R@1 0.600, best 0.950 at epoch 1 "
                             "(best so far 0.950)")
