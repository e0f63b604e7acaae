"""Contract of trainables/private_api.py: each reach into Ray's or Optuna's internals still does what we rely on.

A failure names the adapter function and the installed Ray and Optuna: a new release changed a
private detail, so fix that function (and only it) before raising the caps in pyproject.toml.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from trainables import private_api
from trainables.ray_cluster import init_ray


@contextmanager
def contract(name: str) -> Iterator[None]:
    """Turn any failure inside into one that names the adapter function and the library versions."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - an AttributeError, KeyError, TypeError... all mean the same
        pytest.fail(f"trainables.private_api.{name} no longer works with ray {ray.__version__} and optuna "
                    f"{optuna.__version__}: {type(err).__name__}: {err}", pytrace=True)


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)


def _searcher() -> OptunaSearch:
    return OptunaSearch(space=_space, metric="score", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))


def test_searcher_study_is_the_study_optuna_search_asks() -> None:
    searcher = _searcher()
    searcher.suggest("a")
    with contract("searcher_study"):
        study = private_api.searcher_study(searcher)
        assert isinstance(study, optuna.Study), f"got {type(study).__name__}, not an optuna.Study"
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING], "suggest did not ask this study"


def test_searcher_trial_is_the_optuna_trial_of_a_suggestion() -> None:
    searcher = _searcher()
    config = searcher.suggest("a")
    with contract("searcher_trial"):
        trial = private_api.searcher_trial(searcher, "a")
        assert isinstance(trial, optuna.Trial), f"got {type(trial).__name__}, not an optuna.Trial"
        assert trial.params == config, f"the trial's params {trial.params} are not the suggestion {config}"


def test_an_adopted_trial_is_the_one_optuna_search_tells() -> None:
    searcher = _searcher()
    searcher.suggest("a")
    study = private_api.searcher_study(searcher)
    other = study.ask()
    _space(other)
    with contract("adopt_trial"):
        private_api.adopt_trial(searcher, "b", other)
        assert private_api.searcher_trial(searcher, "b") is other
        # OptunaSearch's own completion path must find the adopted trial under the Ray id.
        searcher.on_trial_complete("b", {"score": 0.5})
        assert study.trials[other.number].state == TrialState.COMPLETE


def test_a_reopened_running_trial_reports_and_is_told_under_its_number() -> None:
    study = optuna.create_study(direction="maximize")
    left = study.ask()
    _space(left)
    left.report(0.4, 1)
    (frozen,) = study.get_trials(deepcopy=False)
    with contract("reopen_trial"):
        trial = private_api.reopen_trial(study, frozen)
        assert trial.number == frozen.number and trial.params == frozen.params
        trial.report(0.6, 2)
        trial.set_user_attr("reopened", True)
        study.tell(trial, 0.6)
        (done,) = study.trials
        assert done.state == TrialState.COMPLETE and done.intermediate_values == {1: 0.4, 2: 0.6}
        assert done.user_attrs == {"reopened": True}


def test_auto_address_reads_ray_address(monkeypatch) -> None:
    """A documentation-range host: Ray rewrites only local addresses (to this node's IP)."""
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.7:6399")
    with contract("auto_address"):
        assert private_api.auto_address() == "192.0.2.7:6399"


class _Results(tune.Callback):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.seen.append(dict(result))


def test_reported_checkpoint_dir_names_the_checkpoint_a_result_came_with(tmp_path) -> None:
    """As the searcher uses it: <storage>/<experiment>/<trial id, our trial dirname>/<the name>."""
    def reports_a_checkpoint(config: dict[str, Any]) -> None:  # local: shipped by value to a worker
        for step in range(2):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "weights").write_text(str(step))
                tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(d))

    if not ray.is_initialized():
        init_ray(None)
    log = _Results()
    tune.Tuner(reports_a_checkpoint, tune_config=tune.TuneConfig(trial_dirname_creator=lambda t: t.trial_id),
               run_config=tune.RunConfig(name="contract", storage_path=str(tmp_path), verbose=0,
                                         callbacks=[log])).fit()
    assert [r["step"] for r in log.seen] == [0, 1], "Tune did not hand the callback every result"
    with contract("reported_checkpoint_dir"):
        for result in log.seen:
            name = private_api.reported_checkpoint_dir(result)
            assert name, f"result {sorted(result)} names no checkpoint"
            assert (tmp_path / "contract" / result["trial_id"] / name / "weights").read_text() == str(result["step"])


def test_the_prestart_flag_is_still_read_by_the_raylet() -> None:
    """An unknown RAY_<flag> is silently ignored, so check that the raylet still knows the flag's name."""
    raylet = Path(ray.__file__).parent / "core" / "src" / "ray" / "raylet" / "raylet"
    with contract("skip_worker_prestart"):
        assert private_api.PRESTART_FLAG.encode() in raylet.read_bytes(), f"{raylet} has no {private_api.PRESTART_FLAG}"


def test_tpe_proposes_from_a_trials_view_as_from_a_study_of_just_those_trials() -> None:
    """TPE reads its trials through the view: the whole study viewed as its last 30 trials proposes
    what a study holding only those 30 does (same seed), and not what the whole study does."""
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    whole, last = optuna.create_study(direction="maximize"), optuna.create_study(direction="maximize")
    for i in range(60):  # early trials favour a small lr, late ones a large one
        value = -abs(i / 60 - (0.0 if i < 30 else 1.0))
        trial = optuna.trial.create_trial(params={"lr": 1e-4 * 100 ** (i / 60)}, distributions=lr, value=value)
        whole.add_trial(trial)
        if i >= 30:
            last.add_trial(trial)
    for study in (whole, last):
        study.ask(lr)

    def propose(study: optuna.Study, view: bool) -> dict:
        sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, constant_liar=False)
        trials = study.get_trials(deepcopy=False)
        seen = private_api.trials_view(study, trials[30:]) if view else study
        return sampler.sample_relative(seen, trials[-1], lr)

    with contract("trials_view"):
        viewed = propose(whole, view=True)
        assert viewed == propose(last, view=False), "TPE did not model (only) the view's trials"
        assert viewed != propose(whole, view=False), "the view changed nothing TPE read"
