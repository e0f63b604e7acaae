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
