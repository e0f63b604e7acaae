"""report.html from a synthetic run directory: self-contained, every section, legible plots, honest notes."""
from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime, timedelta

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import search
from results import ledger, report, tables
from spaces import OptimiserDefaults, default_config, define_by_run
from trainables.config import SELECTION_METRIC

MAX_EPOCHS = 6
R1_TESTED = {1: [0.612, 0.634], 2: [0.581, 0.590]}  # config rank -> test R@1 per seed


def _distributions() -> dict:
    trial = optuna.create_study().ask()
    define_by_run("proxy_anchor", OptimiserDefaults(lr=1e-3))(trial)
    return trial.distributions


def _point(dist, u: float) -> float:
    if dist.log:
        return float(np.exp(np.log(dist.low) + u * (np.log(dist.high) - np.log(dist.low))))
    return dist.low + u * (dist.high - dist.low)


def write_run(out, complete: int, pruned: int, failed: int = 0, tested: bool = True) -> None:
    """A run directory as search.py leaves it: config.json, study.db (defaults first), ledger, final.parquet."""
    out.mkdir(parents=True, exist_ok=True)
    argv = ["--loss", "proxy_anchor", "--trials", str(complete + pruned + failed), "--max-epochs", str(MAX_EPOCHS),
            "--seeds", "2", "--top-k", "2", "--out", str(out)]
    cmd = search.resolve(search.build_parser().parse_args(argv)) | {"argv": argv}
    split = {"fit": list(range(0, 103)), "val": list(range(103, 114)), "test": list(range(114, 228))}
    (out / "config.json").write_text(json.dumps({
        "command": cmd, "versions": {"torch": "2", "optuna": optuna.__version__}, "code": None, "split": split,
        "dataset": {"name": "glyphs", "items": 9120, "sha256_16": "0123456789abcdef", "train_classes": 114,
                    "test_classes": 114}}))
    study = optuna.create_study(study_name="dmltune", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    dists, rng = _distributions(), np.random.default_rng(0)
    start = datetime(2026, 1, 1)
    states = [TrialState.COMPLETE] * complete + [TrialState.PRUNED] * pruned + [TrialState.FAIL] * failed
    for number, state in enumerate(states):
        params = default_config("proxy_anchor", OptimiserDefaults(lr=1e-3)) if number == 0 else {
            name: _point(d, rng.random()) for name, d in dists.items()}
        epochs = MAX_EPOCHS if state == TrialState.COMPLETE else (1 + 2 * (number % 2) if state == TrialState.PRUNED
                                                                  else 0)
        top = 0.5 + 0.4 * rng.random()
        curve = {e: top * (1 - 0.5 ** e) - 0.02 * max(0, e - 4) for e in range(1, epochs + 1)}  # peaks at 4-5
        begin = start + timedelta(seconds=20 * number)  # 10 s per epoch run, plus a start-up second
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, trial_id=number, state=state, params=params, distributions=dists,
            intermediate_values=curve, value=max(curve.values()) if state == TrialState.COMPLETE else None,
            datetime_start=begin, datetime_complete=begin + timedelta(seconds=1 + 10 * epochs),
            user_attrs={}, system_attrs={}))
    if not tested:
        return
    trials = tables.trials_frame(study, MAX_EPOCHS)
    selected = tables.select_top(trials, 2)
    entries, rows = [], []
    for rank, (_, trial) in enumerate(selected.iterrows(), 1):
        params = {c.removeprefix("param_"): trial[c] for c in tables.param_columns(selected)}
        for seed, r1 in enumerate(R1_TESTED[rank]):
            metrics = {"recall@1": r1, "recall@2": r1 + 0.1, "recall@4": r1 + 0.2, "recall@8": r1 + 0.25,
                       "map@r": r1 / 3}
            entries.append({"time": "2026-01-01T01:00:00+00:00", "seed": seed, "config_hash": f"h{rank}{seed}",
                            "epochs": int(trial["best_epoch"]), "params": params, "metrics": metrics,
                            "device": "cpu (2 cores)",
                            "selection": {"rank": rank, "trial": int(trial["number"]),
                                          SELECTION_METRIC: float(trial[f"best_{SELECTION_METRIC}"])}})
            rows.append({"config_rank": rank, "trial_number": int(trial["number"]), "seed": seed,
                         "epochs": int(trial["best_epoch"]), "train_seconds": 30.0,
                         **{f"test_{k}": v for k, v in metrics.items()}})
    with ledger.locked(out / ledger.LEDGER_NAME):
        ledger.append(out / ledger.LEDGER_NAME, *entries)
    tables.write(pd.DataFrame(rows), out / "final.parquet")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    write_run(out, complete=5, pruned=6, failed=1)
    return out


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return report.write_report(run_dir).read_text()


def _images(page: str) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(data)))
            for data in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_one_self_contained_file_with_every_section(page) -> None:
    for title in ("Protocol", "Result", "Optimisation history", "Validation curves", "Searched parameters",
                  "Hyperparameter importance", "Cost", "Provenance"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("<img") == len(_images(page)) == 4  # history, curves, slices, importance
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere


def test_plots_are_large_enough_to_read(page) -> None:
    for image in _images(page):
        assert image.format == "PNG" and image.width >= 700 and image.height >= 150


def test_final_table_puts_validation_beside_test_mean_and_std_and_the_defaults(page, run_dir) -> None:
    r1 = 100 * np.array(R1_TESTED[1])
    assert f"<b>Result: test Recall@1 {r1.mean():.2f}&nbsp;±&nbsp;{r1.std(ddof=1):.2f}</b>" in page
    defaults = tables.trials_frame(tables.load_study(run_dir), MAX_EPOCHS).iloc[0]
    assert f"reached validation Recall@1 <b>{100 * defaults[f'best_{SELECTION_METRIC}']:.2f}</b>" in page
    assert "paper&#x27;s defaults" in page or "paper's defaults" in page


def test_cost_counts_the_epochs_asha_saved(page) -> None:
    ran = 5 * MAX_EPOCHS + 3 * 1 + 3 * 3  # pruned trials stop after 1 or 3 epochs; the failed one ran none
    full = 12 * MAX_EPOCHS
    assert f"<td>trial-epochs run</td><td>{ran}</td>" in page
    assert f"<td>epochs ASHA saved</td><td>{full - ran} ({100 * (full - ran) / full:.0f}%" in page


def test_pruned_trials_are_drawn_dashed_and_grey(run_dir) -> None:
    run = report.load(run_dir)
    fig = report.curves_figure(run)
    styles = {(line.get_linestyle(), line.get_color()) for line in fig.axes[0].lines if len(line.get_xdata()) > 0}
    assert ("--", report.STATE_STYLE["pruned"]["color"]) in styles
    assert ("-", report.STATE_STYLE["complete"]["color"]) in styles


def test_report_command_on_a_small_untested_study_writes_notes_instead_of_failing(tmp_path, capsys) -> None:
    write_run(tmp_path / "run", complete=1, pruned=1, tested=False)
    assert report.main([str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / report.REPORT_NAME)
    page = (tmp_path / "run" / report.REPORT_NAME).read_text()
    assert "Not computed: 1 trial(s) ran the full budget" in page
    assert "not tested yet" in page and "No test result yet" in page


def test_report_command_names_a_directory_that_is_not_a_run(tmp_path, capsys) -> None:
    assert report.main([str(tmp_path)]) == 2
    assert f"{tmp_path} is not a dmltune run directory" in capsys.readouterr().err


def test_study_db_opens_as_optuna_dashboard_opens_it(run_dir) -> None:
    url = f"sqlite:///{run_dir / 'study.db'}"
    [summary] = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    assert len(study.trials) == 12 and study.direction == optuna.study.StudyDirection.MAXIMIZE
