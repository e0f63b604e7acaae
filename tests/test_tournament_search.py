"""The tournament's searcher and scheduler: losses take turns, each keeps its own study, and ASHA
compares a trial only with trials of its own loss."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from spaces import OptimiserDefaults, default_config, define_by_run
from trainables.config import SELECTION_METRIC
from trainables.searcher import PruningAwareOptunaSearch, ResumableASHA
from trainables.study import EPOCH, LOSS_KEY, study_name
from trainables.tune_search import tpe_sampler
from trainables.tournament import PerLossASHA, TournamentSearch

DEFAULTS = OptimiserDefaults(lr=1e-3)


def _searcher(tmp_path, loss: str) -> PruningAwareOptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    return PruningAwareOptunaSearch(
        space=define_by_run(loss, DEFAULTS), metric=SELECTION_METRIC, mode="max",
        points_to_evaluate=[default_config(loss, DEFAULTS)], sampler=tpe_sampler(8, 0),
        study_name=study_name(loss, tournament=True), storage=storage, max_t=2, checkpoint_root=str(tmp_path / "ray"))


def test_losses_take_turns_each_starts_with_its_papers_defaults_and_stops_at_its_budget(tmp_path) -> None:
    search = TournamentSearch({loss: _searcher(tmp_path, loss) for loss in ("ms", "triplet", "proxy_anchor")},
                              {"ms": 3, "triplet": 1, "proxy_anchor": 2})
    configs = [search.suggest(f"t{i}") for i in range(6)]
    assert [c[LOSS_KEY] for c in configs] == ["ms", "triplet", "proxy_anchor", "ms", "proxy_anchor", "ms"]
    for loss in ("ms", "triplet", "proxy_anchor"):
        first = next(c for c in configs if c[LOSS_KEY] == loss)
        assert {k: v for k, v in first.items() if k != LOSS_KEY} == default_config(loss, DEFAULTS)
    assert search.suggest("t6") == Searcher.FINISHED


def test_results_reach_the_study_of_the_trials_loss_only(tmp_path) -> None:
    search = TournamentSearch({loss: _searcher(tmp_path, loss) for loss in ("ms", "triplet")},
                              {"ms": 1, "triplet": 1})
    search.suggest("a")  # ms
    search.suggest("b")  # triplet
    search.on_trial_result("b", {SELECTION_METRIC: 0.4, EPOCH: 1})
    search.on_trial_complete("b", {SELECTION_METRIC: 0.5, EPOCH: 2})
    search.on_trial_complete("a", {SELECTION_METRIC: 0.3, EPOCH: 1})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    triplet = optuna.load_study(study_name=study_name("triplet", True), storage=url).trials
    ms = optuna.load_study(study_name=study_name("ms", True), storage=url).trials
    assert [(t.state, dict(t.intermediate_values)) for t in triplet] == [(TrialState.COMPLETE, {1: 0.4, 2: 0.5})]
    assert [(t.state, dict(t.intermediate_values)) for t in ms] == [(TrialState.PRUNED, {1: 0.3})]


def test_a_loss_with_no_budget_left_is_never_asked(tmp_path) -> None:
    search = TournamentSearch({loss: _searcher(tmp_path, loss) for loss in ("ms", "triplet")},
                              {"ms": 0, "triplet": 2})
    assert [search.suggest(f"t{i}")[LOSS_KEY] for i in range(2)] == ["triplet", "triplet"]
    assert search.suggest("t2") == Searcher.FINISHED


def _asha() -> ResumableASHA:
    return ResumableASHA(max_t=9, grace_period=1, reduction_factor=3)


def _trial(trial_id: str, loss: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={LOSS_KEY: loss})


def _first_rung(scheduler: TrialScheduler, trials: list[SimpleNamespace], values: list[float]) -> list[str]:
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    return [scheduler.on_trial_result(None, t, {EPOCH: 1, SELECTION_METRIC: v}) for t, v in zip(trials, values)]


def test_asha_never_stops_a_trial_on_another_losss_rung_values() -> None:
    # Triplet scores 0.9 on these glyphs where MS scores 0.3: one ASHA over both would stop the MS trial.
    strong = [_trial(f"triplet{i}", "triplet") for i in range(3)]
    weak = _trial("ms0", "ms")
    assert _first_rung(_asha(), [*strong, weak], [0.9, 0.91, 0.92, 0.3])[-1] == TrialScheduler.STOP
    per_loss = PerLossASHA({"triplet": _asha(), "ms": _asha()})
    assert _first_rung(per_loss, [*strong, weak], [0.9, 0.91, 0.92, 0.3])[-1] == TrialScheduler.CONTINUE
    # ...while a weak trial of its own loss is still stopped against its own loss's rung.
    worse = [_trial("ms1", "ms"), _trial("ms2", "ms")]
    assert _first_rung(per_loss, worse, [0.35, 0.1]) == [TrialScheduler.CONTINUE, TrialScheduler.STOP]


def test_replayed_curves_fill_only_their_own_losss_rungs() -> None:
    triplet = _asha()
    for i, value in enumerate((0.9, 0.95, 0.97)):
        triplet.replay(f"study-{i}", {1: value})
    per_loss = PerLossASHA({"triplet": triplet, "ms": _asha()})
    assert _first_rung(per_loss, [_trial("ms0", "ms")], [0.2]) == [TrialScheduler.CONTINUE]
    assert _first_rung(per_loss, [_trial("t0", "triplet")], [0.5]) == [TrialScheduler.STOP]
