"""Faults a search survives: a trial worker killed mid-trial, a config whose loss turns NaN, a killed driver."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray_helpers import IMAGE_SIZE, LOSS, ResultLog, glyph_setup, logged_results, paper_point, space

import search
from results import tables
from results.select import select_top
from trainables.config import SELECTION_METRIC
from trainables.searcher import PruningAwareOptunaSearch, ResumableASHA
from trainables.study import (CHECKPOINT_ATTR, DIVERGED, EPOCH, PAPER_DEFAULTS_ATTR, RAY_TRIAL_ID_ATTR, RERUN_ATTR,
                               RESUME_KEY, SECONDS_ATTR, study_storage)
from trainables.tune_search import SearchSettings, run_search, settle_earlier_drivers, tpe_sampler

REPO = Path(__file__).resolve().parents[1]
MAX_EPOCHS = 3  # ASHA rungs at epochs 1 and 3 (grace 1, reduction 3)
ABSURD_LR = 1e30  # one AdamW step moves every weight by ~1e30: the next forward overflows to NaN


class KillAfterFirstCheckpoint(tune.Callback):
    """SIGKILLs the worker process of the trial running `params` once Tune holds its epoch-1 checkpoint.

    Tune holds a function trial at `tune.report` until the driver has processed the result and its
    checkpoint, so the kill lands between epoch 1 and epoch 2, every time.
    """

    def __init__(self, params: dict[str, float]) -> None:
        self.params = params
        self.target: str | None = None
        self.killed_pid: int | None = None

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        if self.killed_pid is None and trial.config == self.params:
            self.target, self.killed_pid = trial.trial_id, trial.last_result["pid"]
            os.kill(self.killed_pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def faulty_study(tmp_path_factory) -> SimpleNamespace:
    """Three trials: the paper's point (its worker is killed after epoch 1), an absurd lr, one TPE proposal."""
    run_dir = tmp_path_factory.mktemp("faults")
    killer, log = KillAfterFirstCheckpoint(paper_point()), ResultLog()
    diverging = paper_point() | {"lr": ABSURD_LR}
    with pytest.warns(UserWarning, match="out of range"):  # Optuna, of the absurd lr: expected
        run_search(run_dir, glyph_setup(MAX_EPOCHS), space(), [paper_point(), diverging],
                   SearchSettings(trials=3, max_epochs=MAX_EPOCHS), echo=lambda line: None, callbacks=[killer, log])
    study = tables.load_study(run_dir)
    return SimpleNamespace(run_dir=run_dir, killer=killer, log=log, study=study,
                           trials=tables.trials_frame(study, MAX_EPOCHS))


def test_a_killed_trial_worker_resumes_from_its_checkpoint_and_the_trial_completes(faulty_study) -> None:
    killer, log = faulty_study.killer, faulty_study.log
    assert killer.killed_pid is not None
    results = log.results[killer.target]
    # Epoch 1 came from the killed process; the retry loaded epoch 1's checkpoint and went on with epoch 2.
    assert [r[EPOCH] for r in results] == [1, 2, 3]
    assert results[0]["pid"] == killer.killed_pid and {r["pid"] for r in results[1:]} != {killer.killed_pid}
    study_trial = next(t for t in faulty_study.study.trials if t.user_attrs[RAY_TRIAL_ID_ATTR] == killer.target)
    assert study_trial.state == TrialState.COMPLETE and sorted(study_trial.intermediate_values) == [1, 2, 3]


def test_no_trial_is_lost_and_none_failed(faulty_study) -> None:
    trials = faulty_study.trials
    assert len(trials) == 3 and set(trials["number"]) == {0, 1, 2}
    assert set(trials["state"]) <= {"complete", "pruned"}


def paper_defaults_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(PAPER_DEFAULTS_ATTR) is True]


def test_the_paper_defaults_trial_is_tagged_and_no_other(faulty_study) -> None:
    """The first of two first points is tagged; the second (the absurd lr) is queued the same way but untagged."""
    (tagged,) = paper_defaults_trials(faulty_study.study)
    assert tagged.params == paper_point() and tagged.number == 0
    assert all(PAPER_DEFAULTS_ATTR not in t.user_attrs for t in faulty_study.study.trials if t.number != 0)


def test_a_diverging_config_ends_with_its_reason_and_is_never_selected(faulty_study) -> None:
    trials = faulty_study.trials
    diverged = trials[trials["param_lr"] == ABSURD_LR].iloc[0]
    assert "nan" in diverged[DIVERGED].lower() and "epoch 1" in diverged[DIVERGED]
    assert diverged["state"] == "pruned" and list(diverged[f"{SELECTION_METRIC}_curve"]) == [0.0]
    assert trials.loc[trials["param_lr"] != ABSURD_LR, DIVERGED].isna().all()
    assert ABSURD_LR not in set(select_top(trials, 3)["param_lr"])


def test_replayed_rungs_stop_a_trial_the_uninterrupted_run_would_stop() -> None:
    """ASHA's rungs live in the driver; a resumed study refills them from study.db's curves."""
    past = {"study-0": {1: 0.9, 2: 0.92, 3: 0.95}, "study-1": {1: 0.8}, "study-2": {1: 0.7}}
    resumed, fresh = (ResumableASHA(max_t=MAX_EPOCHS, grace_period=1, reduction_factor=3) for _ in range(2))
    for key, curve in past.items():
        resumed.replay(key, curve)
    newcomer = SimpleNamespace(trial_id="new")
    decisions = []
    for scheduler in (resumed, fresh):
        scheduler.on_trial_add(None, newcomer)
        decisions.append(scheduler.on_trial_result(None, newcomer, {EPOCH: 1, SELECTION_METRIC: 0.75}))
    # 0.75 is below the rung's 2/3 quantile of (0.9, 0.8, 0.7); an empty rung stops nothing.
    assert decisions == [TrialScheduler.STOP, TrialScheduler.CONTINUE]


def test_a_reduction_factor_below_2_is_refused_before_study_db_is_written(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least 2.*but got 1"):
        run_search(tmp_path, glyph_setup(MAX_EPOCHS), space(), [paper_point()],
                   SearchSettings(trials=2, max_epochs=MAX_EPOCHS, reduction_factor=1), echo=lambda line: None)
    assert not (tmp_path / "study.db").exists()


def test_an_interrupted_study_trial_is_handed_out_again_under_its_number(tmp_path) -> None:
    storage = study_storage(tmp_path)
    study = optuna.create_study(storage=storage, study_name="dmltune", direction="maximize")
    checkpoint = tmp_path / "ray" / "old" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    left = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    left.report(0.5, 1)
    left.set_user_attr(CHECKPOINT_ATTR, str(checkpoint))
    left.set_user_attr(SECONDS_ATTR, 5.0)
    replayed: list[tuple[str, dict]] = []
    searcher = PruningAwareOptunaSearch(
        space=space(), metric=SELECTION_METRIC, mode="max", sampler=tpe_sampler(4, 0), study_name="dmltune",
        storage=storage, max_t=MAX_EPOCHS, checkpoint_root=str(tmp_path / "ray"),
        resume=study.get_trials(states=(TrialState.RUNNING,)),
        on_resume=lambda trial_id, curve: replayed.append((trial_id, dict(curve))))
    config = searcher.suggest("new")
    assert config == {"lr": left.params["lr"], RESUME_KEY: {"trial": left.number, "checkpoint": str(checkpoint)}}
    assert replayed == [("new", {1: 0.5})]
    searcher.on_trial_result("new", {SELECTION_METRIC: 0.6, EPOCH: 2, "checkpoint_dir_name": "checkpoint_000000",
                                     "time_total_s": 4.0})
    searcher.on_trial_complete("new", {SELECTION_METRIC: 0.7, EPOCH: 3, "time_total_s": 9.0})
    (trial,) = study.trials
    assert trial.number == left.number and trial.state == TrialState.COMPLETE
    assert trial.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    # Its time: the 5 s the first driver saw plus this driver's 9 s, never the time between the two drivers.
    assert trial.user_attrs[SECONDS_ATTR] == 14.0
    assert trial.user_attrs[CHECKPOINT_ATTR] == f"{tmp_path / 'ray'}/new/checkpoint_000000"


def test_an_interrupted_trial_whose_checkpoint_is_gone_runs_again_as_a_new_trial(tmp_path) -> None:
    study = optuna.create_study(storage=study_storage(tmp_path), study_name="dmltune", direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    study.tell(study.ask({"lr": lr}), 0.4)  # finished
    lost = study.ask({"lr": lr})  # reported epoch 1, but its checkpoint was deleted since
    lost.report(0.5, 1)
    lost.set_user_attr(PAPER_DEFAULTS_ATTR, True)  # it ran the paper's defaults: its rerun takes the tag
    lost.set_user_attr(CHECKPOINT_ATTR, str(tmp_path / "ray" / "gone" / "checkpoint_000000"))
    kept_dir = tmp_path / "ray" / "kept" / "checkpoint_000000"
    kept_dir.mkdir(parents=True)
    kept = study.ask({"lr": lr})
    kept.report(0.6, 1)
    kept.set_user_attr(CHECKPOINT_ATTR, str(kept_dir))
    fresh = study.ask({"lr": lr})  # interrupted in its first epoch: nothing reported, nothing to mix

    finished, resumed, rerun = settle_earlier_drivers(study, trials=4)
    assert [t.number for t in finished] == [0]
    assert [t.number for t in resumed] == [kept.number, fresh.number]
    assert rerun == [study.trials[lost.number].params]  # its config runs again under a new number
    closed = study.trials[lost.number]
    assert closed.state == TrialState.FAIL and RERUN_ATTR in closed.user_attrs
    # The closed trial does not use up the budget: a later driver still owes 3 trials beyond the finished one.
    again, _, rerun_again = settle_earlier_drivers(study, trials=4)
    assert [t.number for t in again] == [0] and rerun_again == []
    # The config is queued in study.db before any Ray starts, once, however many drivers come and go:
    # the next trial the study hands out (here to a later driver) is the lost one's config.
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert study.ask({"lr": lr}).params == closed.params
    assert closed.user_attrs[PAPER_DEFAULTS_ATTR] is False
    assert [t.number for t in paper_defaults_trials(study)] == [len(study.trials) - 1]


def _snapshot(run_dir: Path) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in tables.load_study(run_dir).trials}


def _session_processes(sid: int) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, s in (line.split() for line in ps.splitlines()) if int(s) == sid]


def _kill_session(sid: int) -> None:
    """The driver and every process it started (its local Ray): as if its machine had gone away."""
    for pid in _session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for_interruptible_state(run_dir: Path, log: Path, driver: subprocess.Popen, timeout_s: float = 240) -> None:
    """Until the study holds a finished trial and a running one with a checkpoint on storage.

    The study is read only once the driver printed its first trial, so it exists.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the search ended before it could be interrupted:\n{log.read_text()}"
        if "started:" in log.read_text():
            trials = _snapshot(run_dir).values()  # the journal reads while the driver appends
            if any(t.state.is_finished() for t in trials) and any(
                    t.state == TrialState.RUNNING and CHECKPOINT_ATTR in t.user_attrs for t in trials):
                return
        time.sleep(0.2)
    raise AssertionError(f"no interruptible state within {timeout_s}s:\n{log.read_text()}")


def test_a_killed_driver_resumes_without_losing_or_repeating_a_trial(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["--loss", LOSS, "--trials", "4", "--max-epochs", str(MAX_EPOCHS), "--final-epochs", "1",
            "--image-size", str(IMAGE_SIZE), "--out", str(run_dir)]
    log = tmp_path / "driver.log"
    with open(log, "w") as sink:
        driver = subprocess.Popen([sys.executable, str(REPO / "search.py"), *argv], cwd=REPO, stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_interruptible_state(run_dir, log, driver)
        finally:
            _kill_session(driver.pid)
            driver.wait()
    before = _snapshot(run_dir)
    finished = {n: t for n, t in before.items() if t.state.is_finished()}
    (number, interrupted), *_ = [(n, t) for n, t in before.items()
                                 if t.state == TrialState.RUNNING and CHECKPOINT_ATTR in t.user_attrs]

    assert search.main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    after = _snapshot(run_dir)
    table = pd.read_parquet(run_dir / "trials.parquet")
    assert sorted(after) == list(range(4)) and sorted(table["number"]) == list(range(4))
    assert table["ray_trial_id"].is_unique and all(t.state.is_finished() for t in after.values())
    for n, t in finished.items():  # what the first driver finished is exactly as it left it
        assert (after[n].state, after[n].params, after[n].intermediate_values) == (t.state, t.params,
                                                                                    t.intermediate_values)
    # The interrupted trial kept its number, params and curve, and went on from its checkpoint's epoch.
    resumed = after[number]
    last = max(interrupted.intermediate_values)
    assert resumed.params == interrupted.params
    assert {s: v for s, v in resumed.intermediate_values.items() if s <= last} == interrupted.intermediate_values
    first_result = logged_results(run_dir / "ray", resumed.user_attrs[RAY_TRIAL_ID_ATTR])[0]
    assert first_result[EPOCH] == last + 1
    assert f"continues interrupted study trial {number} from its last checkpoint" in out
    # The searcher went on from the same study: the paper's point was proposed once, not again.
    assert sum(t.params == paper_point() for t in after.values()) == 1
    (tagged,) = paper_defaults_trials(tables.load_study(run_dir))  # the tag survived the resume, on that trial
    assert tagged.params == paper_point()
    assert "already tested" not in out and (run_dir / "final.parquet").exists()
