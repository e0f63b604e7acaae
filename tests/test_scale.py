"""A simulated search at a few dozen slots: the real driver (run_search) over trials that only sleep.

bench/scale.py measures this path at hundreds of slots; here the record it leaves is checked: every
Ray trial is in the study exactly once with its final state, ASHA stopped some, trials.parquet and
the study.db copy agree with the journal, and each trial kept one checkpoint, the one it points at.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import ray
from ray import tune
from ray.cloudpickle import register_pickle_by_value
from ray.tune.experiment import Trial

from results import tables
from spaces import OptimiserDefaults, default_config, define_by_run
from trainables.config import SELECTION_METRIC
from trainables.ray_cluster import init_ray
from trainables.study import CHECKPOINT_ATTR, RAY_TRIAL_ID_ATTR, STUDY_NAME, study_url
from trainables.tune_search import PENDING_ENV, SNAPSHOT_ENV, SNAPSHOT_SECONDS, SearchSettings, run_search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scale_trial  # noqa: E402

SLOTS, TRIALS, MAX_EPOCHS = 32, 100, 4  # ASHA rungs at epochs 1 and 3 (grace 1, reduction 3)

pytestmark = pytest.mark.slow  # 32 trial actors: about a minute on a quiet 2-core machine, more under load


class StartedTrials(tune.Callback):
    """The trials Tune started, the most it ever held unfinished, and the actors that ran epochs."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.most_in_flight = 0
        self.actors: set[int] = set()
        self.tune_env: dict[str, str | None] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ids.append(trial.trial_id)
        self.tune_env = {name: os.environ.get(name) for name in (PENDING_ENV, SNAPSHOT_ENV)}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        in_flight = sum(t.status in (Trial.PENDING, Trial.RUNNING) for t in trials)
        self.most_in_flight = max(self.most_in_flight, in_flight)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.actors.add(result["pid"])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StartedTrials]:
    run_dir = tmp_path_factory.mktemp("scale")
    register_pickle_by_value(scale_trial)  # the workers need not find bench/ on their path
    started = StartedTrials()
    defaults = OptimiserDefaults()
    if ray.is_initialized():
        ray.shutdown()
    init_ray(None, num_cpus=SLOTS)
    try:
        run_search(run_dir, scale_trial.SimSetup(epoch_seconds=0.3, max_t=MAX_EPOCHS),
                   define_by_run("softtriple", defaults), [default_config("softtriple", defaults)],
                   SearchSettings(trials=TRIALS, max_epochs=MAX_EPOCHS), echo=lambda line: None,
                   callbacks=[started], trial=scale_trial.sim_trial)
    finally:
        ray.shutdown()
    tables.write(tables.trials_frame(tables.load_study(run_dir), MAX_EPOCHS), run_dir / "trials.parquet")
    return run_dir, started


def test_every_trial_is_in_the_study_once_with_its_final_state(simulated) -> None:
    run_dir, callback = simulated
    started = callback.ids
    trials = tables.load_study(run_dir).trials
    assert len(started) == TRIALS and len(set(started)) == TRIALS
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    assert sorted(t.user_attrs[RAY_TRIAL_ID_ATTR] for t in trials) == sorted(started)
    states = [t.state for t in trials]
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert states.count(optuna.trial.TrialState.PRUNED) > TRIALS // 2  # ASHA stopped most at its rungs
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1


def test_no_trial_is_proposed_ahead_of_a_free_slot_and_every_actor_is_reused(simulated) -> None:
    """SlotLimiter holds Tune to one unfinished trial per slot (TPE's constant liar sees no
    trial that cannot start yet); a trial's actor is reused, never one per trial."""
    _, callback = simulated
    assert callback.most_in_flight == SLOTS
    assert len(callback.actors) <= SLOTS


def test_tune_runs_with_our_settings_and_the_environment_is_restored(simulated) -> None:
    """SlotLimiter, not Tune's pending limit, is the gate; Tune's experiment state is saved rarely."""
    _, callback = simulated
    assert callback.tune_env == {PENDING_ENV: str(TRIALS), SNAPSHOT_ENV: str(SNAPSHOT_SECONDS)}
    assert PENDING_ENV not in os.environ and SNAPSHOT_ENV not in os.environ


def test_the_study_db_copy_and_trials_parquet_agree_with_the_journal(simulated) -> None:
    run_dir, _ = simulated
    journal = tables.trials_frame(tables.load_study(run_dir), MAX_EPOCHS)
    copy = tables.trials_frame(optuna.load_study(study_name=STUDY_NAME, storage=study_url(run_dir)), MAX_EPOCHS)
    table = pd.read_parquet(run_dir / "trials.parquet")
    pd.testing.assert_frame_equal(copy, journal)
    key = ["number", "ray_trial_id", "state", "epochs", f"best_{SELECTION_METRIC}"]
    assert table[key].equals(journal[key])
    assert table[f"{SELECTION_METRIC}_curve"].map(list).tolist() == journal[f"{SELECTION_METRIC}_curve"].tolist()


def test_each_trial_keeps_one_checkpoint_the_one_the_study_points_at(simulated) -> None:
    run_dir, _ = simulated
    for t in tables.load_study(run_dir).trials:
        trial_dir = run_dir / "ray" / t.user_attrs[RAY_TRIAL_ID_ATTR]
        kept = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
        assert len(kept) == 1, (t.number, kept)
        assert Path(t.user_attrs[CHECKPOINT_ATTR]).name == kept[0]
