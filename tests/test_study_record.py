"""The study's record (study.journal written behind the driver, study.db its copy) and TPE's bounded window."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from trainables.sampler import GOOD, WindowedTPESampler
from trainables.study import (JOURNAL_FILE, STUDY_FILE, STUDY_NAME, WriteBehindJournal, load_study, open_journal,
                              study_url, write_dashboard_copy)

X = {"x": FloatDistribution(0.0, 1.0)}


def _study(run_dir: Path) -> tuple[optuna.Study, WriteBehindJournal]:
    journal = open_journal(run_dir)
    study = optuna.create_study(storage=optuna.storages.JournalStorage(journal), study_name=STUDY_NAME,
                                direction="maximize", load_if_exists=True)
    return study, journal


def test_writes_reach_the_file_and_what_waits_for_them_runs_after(tmp_path) -> None:
    study, journal = _study(tmp_path)
    trial = study.ask(X)
    trial.report(0.25, 1)
    seen_on_disk: list[bool] = []
    journal.when_durable(lambda: seen_on_disk.append('"intermediate_value"' in
                                                     (tmp_path / JOURNAL_FILE).read_text()))
    study.tell(trial, 0.5)
    journal.close()
    assert seen_on_disk == [True]
    (again,) = load_study(tmp_path).trials  # a fresh reader replays the file
    assert again.state == TrialState.COMPLETE and again.value == 0.5 and again.intermediate_values == {1: 0.25}


def test_a_half_written_last_line_is_dropped_and_the_journal_stays_readable(tmp_path) -> None:
    study, journal = _study(tmp_path)
    study.tell(study.ask(X), 0.5)
    journal.close()
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write('{"op_code": 4, "worker')  # the driver died inside a write
    study, journal = _study(tmp_path)
    study.tell(study.ask(X), 0.7)
    journal.close()
    assert [t.value for t in load_study(tmp_path).trials] == [0.5, 0.7]


def test_a_run_from_before_the_journal_is_carried_over_and_copied_back(tmp_path) -> None:
    old = optuna.create_study(storage=study_url(tmp_path), study_name=STUDY_NAME, direction="maximize")
    old.tell(old.ask(X), 0.4)
    left = old.ask(X)
    left.report(0.3, 1)
    assert [t.state for t in load_study(tmp_path).trials] == [TrialState.COMPLETE, TrialState.RUNNING]  # study.db read
    study, journal = _study(tmp_path)
    assert [(t.number, t.state, t.intermediate_values) for t in study.trials] == [
        (0, TrialState.COMPLETE, {}), (1, TrialState.RUNNING, {1: 0.3})]
    study.tell(study.ask(X), 0.9)
    journal.close()
    write_dashboard_copy(tmp_path)
    copy = optuna.load_study(study_name=STUDY_NAME, storage=study_url(tmp_path))
    assert [t.value for t in copy.trials] == [0.4, None, 0.9]
    assert not list(tmp_path.glob("*.tmp")) and (tmp_path / STUDY_FILE).exists()


def test_tpes_window_keeps_its_good_group_the_running_trials_and_the_latest_others() -> None:
    study = optuna.create_study(direction="maximize")
    for i in range(700):  # the best complete trials come first, so only the window's ranking keeps them
        study.tell(study.ask(X), 1.0 - i / 1000)
    for _ in range(30):  # pruned ones rank below every complete trial in TPE's order
        trial = study.ask(X)
        trial.report(0.99, 1)
        study.tell(trial, state=TrialState.PRUNED)
    running = [study.ask(X) for _ in range(5)]
    sampler = WindowedTPESampler(history=100, seed=0)
    numbers = [t.number for t in sampler.window(study)]
    good = list(range(GOOD))  # the 25 best by value: the oldest trials
    latest = list(range(730 - 100, 730))
    assert numbers == sorted(set(good + latest + [t.number for t in running]))
    assert len(WindowedTPESampler(history=1000).window(study)) == 735  # a small study is modelled whole


def test_tpes_window_updates_its_good_group_as_better_trials_finish_and_ties_go_to_the_older() -> None:
    study = optuna.create_study(direction="maximize")
    for i in range(600):  # ten trials share each value: the good group holds 0..24, not 25..29
        study.tell(study.ask(X), 0.5 - (i // 10) / 1000)
    sampler = WindowedTPESampler(history=100, seed=0)
    assert [t.number for t in sampler.window(study)][:GOOD] == list(range(GOOD))
    for _ in range(10):  # better than all: they join the good group and push out 15..24
        study.tell(study.ask(X), 0.9)
    for i in range(100):  # a newer history, pushing the ten out of it
        study.tell(study.ask(X), 0.1)
    window = {t.number for t in sampler.window(study)}
    assert window == set(range(15)) | set(range(600, 610)) | set(range(610, 710))


def test_tpes_search_space_is_optunas_intersection_of_the_finished_trials() -> None:
    """Read once per trial, it still drops a parameter a later trial lacks or draws from another range."""
    sampler = WindowedTPESampler(seed=0, multivariate=True)
    reference = optuna.search_space.IntersectionSearchSpace(include_pruned=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    spaces = []

    def run(y_high: float, with_z: bool, state: TrialState) -> None:
        trial = study.ask({"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, y_high)}
                          | ({"z": FloatDistribution(0.0, 1.0)} if with_z else {}))
        if state != TrialState.RUNNING:
            study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
        spaces.append((sampler.infer_relative_search_space(study, trial), reference.calculate(study)))

    for _ in range(3):
        run(1.0, True, TrialState.COMPLETE)
    run(1.0, False, TrialState.FAIL)  # a failed trial counts for neither
    run(1.0, False, TrialState.RUNNING)  # nor an unfinished one, until it finishes
    run(1.0, True, TrialState.PRUNED)
    assert spaces[-1][0].keys() == {"x", "y", "z"}
    run(2.0, True, TrialState.PRUNED)  # y from another range: no longer shared
    run(1.0, False, TrialState.COMPLETE)  # z missing
    assert spaces[-1][0].keys() == {"x"}
    assert [ours for ours, _ in spaces] == [theirs for _, theirs in spaces]


def test_windowed_tpe_proposes_what_optunas_tpe_does_on_a_study_within_its_window() -> None:
    def proposals(sampler: optuna.samplers.BaseSampler) -> list[dict[str, float]]:
        study = optuna.create_study(sampler=sampler, direction="maximize")
        running = []
        for i in range(40):  # four in flight, every third stopped early, as under ASHA
            trial = study.ask()
            trial.suggest_float("x", 0.0, 1.0)
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            running.append(trial)
            if len(running) == 4:
                done = running.pop(0)
                done.report(done.params["x"], 1)
                study.tell(done, state=TrialState.PRUNED) if i % 3 == 0 else study.tell(done, done.params["x"])
        return [t.params for t in study.trials]

    settings = {"seed": 3, "multivariate": True, "constant_liar": True, "n_startup_trials": 5}
    assert proposals(WindowedTPESampler(**settings)) == proposals(optuna.samplers.TPESampler(**settings))


def test_tpes_window_ranks_a_pruned_trial_that_ended_on_nan_last_as_optuna_does() -> None:
    study = optuna.create_study(direction="maximize")
    for i in range(600):  # all pruned at epoch 1, the first on NaN, the rest worse in turn
        trial = study.ask(X)
        trial.report(float("nan") if i == 0 else 0.5 - i / 10000, 1)
        study.tell(trial, state=TrialState.PRUNED)
    numbers = [t.number for t in WindowedTPESampler(history=100, seed=0).window(study)]
    assert numbers[:GOOD] == list(range(1, GOOD + 1))
