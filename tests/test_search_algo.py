"""The searcher tells Optuna what ASHA did: a trial stopped before max_t is PRUNED, not COMPLETE."""
from __future__ import annotations

import optuna
import ray
from optuna.trial import TrialState
from ray_helpers import glyph_setup, paper_point, space

from results import tables
from spaces import OptimiserDefaults, default_config, define_by_run
from trainables.config import SELECTION_METRIC
from trainables.ray_cluster import init_ray
from trainables.searcher import PruningAwareOptunaSearch
from trainables.study import DIVERGED, EPOCH
from trainables.tune_search import SearchSettings, run_search, tpe_sampler


def _searcher(tmp_path, max_t: int = 4) -> PruningAwareOptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    return PruningAwareOptunaSearch(space=define_by_run("softtriple", OptimiserDefaults()), metric=SELECTION_METRIC,
                                    mode="max", sampler=tpe_sampler(8, 0), study_name="dmltune", storage=storage,
                                    max_t=max_t, checkpoint_root=str(tmp_path / "ray"))


def _run(searcher, trial_id: str, values: list[float]) -> None:
    """Ray's order: every result but the last goes to on_trial_result, the last only to on_trial_complete."""
    searcher.suggest(trial_id)
    for step, v in enumerate(values[:-1], start=1):
        searcher.on_trial_result(trial_id, {SELECTION_METRIC: v, EPOCH: step})
    searcher.on_trial_complete(trial_id, {SELECTION_METRIC: values[-1], EPOCH: len(values)})


def test_stopped_trial_is_pruned_full_trial_is_complete_and_both_are_in_study_db(tmp_path) -> None:
    searcher = _searcher(tmp_path)
    _run(searcher, "a", [0.2, 0.3])
    _run(searcher, "b", [0.2, 0.4, 0.5, 0.6])
    _run(searcher, "d", [0.25])  # stopped at the first rung: its only result arrives with completion
    searcher.suggest("c")
    searcher.on_trial_complete("c", None, error=True)
    study = optuna.load_study(study_name="dmltune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert by_id["a"].state == TrialState.PRUNED and by_id["a"].value == 0.3
    assert by_id["b"].state == TrialState.COMPLETE and by_id["b"].value == 0.6
    assert by_id["c"].state == TrialState.FAIL
    assert dict(by_id["b"].intermediate_values) == {1: 0.2, 2: 0.4, 3: 0.5, 4: 0.6}
    assert by_id["d"].state == TrialState.PRUNED and by_id["d"].value == 0.25
    assert dict(by_id["d"].intermediate_values) == {1: 0.25}


def test_the_papers_defaults_are_a_point_of_the_space() -> None:
    defaults = default_config("softtriple", OptimiserDefaults())
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(defaults)
    trial = study.ask()
    define_by_run("softtriple", OptimiserDefaults())(trial)
    assert trial.params == defaults


def test_a_full_budget_trial_is_told_its_best_epoch_the_number_selection_ranks_it_by(tmp_path) -> None:
    searcher = _searcher(tmp_path)
    _run(searcher, "peaked", [0.2, 0.7, 0.5, 0.4])  # the curve peaks at epoch 2 and declines
    searcher.suggest("broken")
    searcher.on_trial_result("broken", {SELECTION_METRIC: 0.3, EPOCH: 1})
    searcher.on_trial_complete("broken", {SELECTION_METRIC: 0.35, EPOCH: 2}, error=True)
    searcher.suggest("blew_up")  # its loss turned NaN in the last epoch: the trainable reports 0 with the reason
    for step, v in enumerate([0.5, 0.6, 0.65], start=1):
        searcher.on_trial_result("blew_up", {SELECTION_METRIC: v, EPOCH: step})
    searcher.on_trial_complete("blew_up", {SELECTION_METRIC: 0.0, EPOCH: 4, DIVERGED: "loss is nan"})
    study = tables.load_study(tmp_path)
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert by_id["peaked"].state == TrialState.COMPLETE and by_id["peaked"].value == 0.7
    # Not a good full-budget config: TPE must not learn 0.65 from it.
    assert by_id["blew_up"].state == TrialState.PRUNED and by_id["blew_up"].user_attrs[DIVERGED] == "loss is nan"
    assert by_id["broken"].state == TrialState.FAIL  # an errored trial is not COMPLETE, whatever it reported
    frame = tables.trials_frame(study, max_epochs=4).set_index("number")
    assert frame.loc[by_id["peaked"].number, f"best_{SELECTION_METRIC}"] == by_id["peaked"].value


def ray_cpus() -> float:
    """All of the running Ray's CPUs (one trial slot), starting a local Ray if none runs."""
    if not ray.is_initialized():
        init_ray(None)
    return ray.cluster_resources()["CPU"]


def test_a_search_with_one_trial_at_a_time_reproduces_exactly(tmp_path) -> None:
    """Parallel trials make the path depend on report order; one slot removes that, so seed -> same study."""
    studies = []
    for run in ("a", "b"):
        run_dir = tmp_path / run
        run_dir.mkdir()
        run_search(run_dir, glyph_setup(epochs=3), space(), [paper_point()], echo=lambda line: None,
                   settings=SearchSettings(trials=4, max_epochs=3, grace_period=1, cpus_per_trial=ray_cpus()))
        studies.append([(t.number, t.state, t.params, dict(t.intermediate_values))
                        for t in tables.load_study(run_dir).trials])
    assert studies[0] == studies[1]
    assert len({str(params) for _, _, params, _ in studies[0]}) == 4 and any(s == TrialState.PRUNED
                                                                              for _, s, _, _ in studies[0])
