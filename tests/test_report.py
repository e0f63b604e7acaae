"""report.html from a synthetic run directory: self-contained, every section, legible plots, honest notes."""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import search
from results import console, ledger, report, report_data, report_figures, report_sections, select, tables
from spaces import OptimiserDefaults, default_config, define_by_run
from trainables.config import SELECTION_METRIC
from trainables.run_config import RunConfig
from trainables.study import DIVERGED, PAPER_DEFAULTS_ATTR, RERUN_ATTR, SECONDS_ATTR

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


REASON = "loss became nan in epoch 2; the config (lr=0.001, {}) diverges."  # DivergedError's, as run_trial reports it


def kinds(complete: int, pruned: int, failed: int = 0) -> list[tuple[str, int]]:
    """(kind, epochs run) per trial: complete ones run the budget, pruned ones 1 or 3 epochs, failed ones none."""
    n = complete + pruned
    return ([("complete", MAX_EPOCHS)] * complete + [("pruned", 1 + 2 * (i % 2)) for i in range(complete, n)]
            + [("failed", 0)] * failed)


# The data as the ledger recorded it at the test stage: a test image was repaired after config.json was written.
TESTED_DATA = {"name": "glyphs", "items": 9120, "sha256_16": "fedcba9876543210", "train_classes": 114,
               "test_classes": 114}
STUDY_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
                "diverged": TrialState.PRUNED, "running": TrialState.RUNNING, "waiting": TrialState.WAITING,
                "rerun": TrialState.FAIL}


def write_run(out, trials: list[tuple[str, int]], tested: bool = True, trials_flag: int | None = None) -> None:
    """A run directory as search.py leaves it: config.json, study.db (defaults first), ledger, final.parquet.

    `trials` are (kind, epochs) in trial order: a study state, "diverged" (pruned with the reason, its
    last epoch scored 0 as run_trial reports it) or "rerun" (closed on resume, its config run again).
    `trials_flag` is config.json's --trials if not len(trials).
    """
    out.mkdir(parents=True, exist_ok=True)
    argv = ["--loss", "proxy_anchor", "--trials", str(trials_flag or len(trials)), "--max-epochs", str(MAX_EPOCHS),
            "--seeds", "2", "--top-k", "2", "--out", str(out)]
    cmd = search.run_config(search.build_parser().parse_args(argv), argv).to_json()
    split = {"fit": list(range(0, 103)), "val": list(range(103, 114)), "test": list(range(114, 228))}
    (out / "config.json").write_text(json.dumps({
        "command": cmd, "versions": {"torch": "2", "optuna": optuna.__version__}, "code": None, "split": split,
        "dataset": {"name": "glyphs", "items": 9120, "sha256_16": "0123456789abcdef", "train_classes": 114,
                    "test_classes": 114}}))
    study = optuna.create_study(study_name="dmltune", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    dists, rng = _distributions(), np.random.default_rng(0)
    start = datetime(2026, 1, 1)
    for number, (kind, epochs) in enumerate(trials):
        state = STUDY_STATES[kind]
        params = default_config("proxy_anchor", OptimiserDefaults(lr=1e-3)) if number == 0 else {
            name: _point(d, rng.random()) for name, d in dists.items()}
        top = 0.5 + 0.4 * rng.random()
        curve = {e: top * (1 - 0.5 ** e) - 0.02 * max(0, e - 4) for e in range(1, epochs + 1)}  # peaks at 4-5
        if kind == "diverged":
            curve[epochs] = 0.0
        begin = start + timedelta(seconds=20 * number)  # 10 s per epoch run, plus a start-up second (SECONDS_ATTR)
        waiting = state == TrialState.WAITING  # enqueued, not started: no params, no times
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, trial_id=number, state=state, params={} if waiting else params,
            distributions={} if waiting else dists, intermediate_values=curve,
            value=max(curve.values()) if state == TrialState.COMPLETE else None,
            datetime_start=None if waiting else begin,
            datetime_complete=begin + timedelta(seconds=1 + 10 * epochs) if state.is_finished() else None,
            user_attrs=({DIVERGED: REASON} if kind == "diverged" else {RERUN_ATTR: "gone"} if kind == "rerun" else {})
            | ({} if waiting else {SECONDS_ATTR: 1.0 + 10 * epochs})
            | ({PAPER_DEFAULTS_ATTR: True} if number == 0 else {}), system_attrs={}))
    if not tested:
        return
    frame = tables.trials_frame(study, MAX_EPOCHS)
    selected = select.select_top(frame, 2)
    entries, rows = [], []
    for rank, (_, trial) in enumerate(selected.iterrows(), 1):
        params = tables.row_params(trial)
        for seed, r1 in enumerate(R1_TESTED[rank]):
            metrics = {"recall@1": r1, "recall@2": r1 + 0.1, "recall@4": r1 + 0.2, "recall@8": r1 + 0.25,
                       "map@r": r1 / 3, "r_precision": r1 / 2}
            entries.append({"time": "2026-01-01T01:00:00+00:00", "seed": seed, "config_hash": f"h{rank}{seed}",
                            "epochs": int(trial["best_epoch"]), "params": params, "metrics": metrics,
                            "device": "cpu (2 cores)", "test_device": "cpu (2 cores)", "dataset": TESTED_DATA,
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
    write_run(out, kinds(complete=5, pruned=6, failed=1))
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
    full = 11 * MAX_EPOCHS  # the failed trial's budget was not ASHA's saving
    assert f"<td>trial-epochs run</td><td>{ran}</td>" in page
    assert f"<td>epochs ASHA saved</td><td>{full - ran} ({100 * (full - ran) / full:.0f}%" in page


def test_pruned_trials_are_drawn_dashed_and_grey(run_dir) -> None:
    run = report_data.load(run_dir)
    fig = report_figures.curves_figure(run)
    styles = {(line.get_linestyle(), line.get_color()) for line in fig.axes[0].lines if len(line.get_xdata()) > 0}
    assert ("--", report_figures.STATE_STYLE["pruned"]["color"]) in styles
    assert ("-", report_figures.STATE_STYLE["complete"]["color"]) in styles


def test_report_command_on_a_small_untested_study_writes_notes_instead_of_failing(tmp_path, capsys) -> None:
    write_run(tmp_path / "run", kinds(complete=1, pruned=1), tested=False)
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


# An interrupted run (`python -m results.report RUN` before its test stage), resumed with another --trials:
# the defaults diverged, one trial failed after two epochs, three were still running or waiting, and one
# lost its checkpoint and was closed, its config run again as a new trial.
MIXED = ([("diverged", 2)] + [("complete", MAX_EPOCHS)] * 4 + [("pruned", 1), ("pruned", 3), ("pruned", 3)]
         + [("failed", 2), ("failed", 0), ("diverged", 4), ("running", 2), ("running", 0), ("waiting", 0),
            ("rerun", 2)])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> report_data.Run:
    out = tmp_path_factory.mktemp("mixed") / "run"
    write_run(out, MIXED, tested=False, trials_flag=8)
    return report_data.load(out)


def _legend_labels(fig) -> set[str]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends
    return {text.get_text() for legend in legends for text in legend.get_texts()}


def _figures(run: report_data.Run) -> dict:
    return {"history": report_figures.history_figure(run), "curves": report_figures.curves_figure(run),
            "slices": report_figures.slices_figure(run)}


def test_diverged_trials_are_shown_as_diverged_with_their_reason_not_as_pruned(mixed) -> None:
    for name, fig in _figures(mixed).items():
        labels = _legend_labels(fig)
        assert report_figures.STATE_STYLE["diverged"]["label"] in labels, name
    curves = report_figures.curves_figure(mixed)
    assert report_figures.STATE_STYLE["diverged"]["color"] in {line.get_color() for line in curves.axes[0].lines}
    text = report_sections.defaults_paragraph(mixed)
    assert "diverged" in text and html.escape(REASON) in text and "pruned" not in text


def test_unfinished_and_failed_trials_have_a_style_and_a_legend_entry_in_every_plot(mixed) -> None:
    for name, fig in _figures(mixed).items():
        labels = _legend_labels(fig)
        assert {report_figures.STATE_STYLE[s]["label"] for s in ("unfinished", "failed")} <= labels, name
    # Only failed trials stand at 0 in the history (no score); unfinished ones without a score are named instead.
    history = report_figures.history_figure(mixed).axes[0]
    at_zero = [point for c in history.collections for point in c.get_offsets() if point[1] == 0]
    assert [point[0] for point in at_zero] == [9]
    assert "trial(s) 12 (unfinished), 13 (unfinished)" in report.render(mixed)


def test_curves_use_each_states_style(mixed) -> None:
    styles = {(line.get_linestyle(), line.get_color()) for line in report_figures.curves_figure(mixed).axes[0].lines}
    for state in ("complete", "pruned", "diverged", "unfinished", "failed"):
        style = report_figures.STATE_STYLE[state]
        assert (style["ls"], style["color"]) in styles, state


def test_cost_counts_only_trials_that_finished_normally_as_asha_savings(mixed) -> None:
    table = report_sections.cost_table(mixed)
    ran = sum(epochs for _, epochs in MIXED)
    normal = [epochs for kind, epochs in MIXED if kind in ("complete", "pruned")]
    full = len(normal) * MAX_EPOCHS
    per_epoch = sum(1 + 10 * e for e in normal) / sum(normal)  # write_run: 10 s per epoch plus a start-up second
    assert f"<td>trial-epochs run</td><td>{ran}</td>" in table
    assert (f"<td>epochs ASHA saved</td><td>{full - sum(normal)} ({100 * (full - sum(normal)) / full:.0f}%"
            in table)
    assert f"at {per_epoch:.1f} s per epoch" in table


def test_protocol_counts_the_trials_in_the_study_not_the_commands_trials(mixed) -> None:
    assert f"<b>Search</b>: {len(MIXED) - 1} configs" in report_sections.protocol_paragraph(mixed)  # a rerun is one config


def test_the_defaults_rank_is_their_selection_rank(tmp_path) -> None:
    trials = [("pruned", 3)] + [("complete", MAX_EPOCHS)] * 3 + [("pruned", 1), ("failed", 2), ("diverged", 4)]
    write_run(tmp_path / "run", trials, tested=False)
    run = report_data.load(tmp_path / "run")
    order = list(select.ranked(run.trials)["number"])
    assert sorted(order[:3]) == [1, 2, 3]  # the full-budget trials first
    assert f"rank {order.index(0) + 1} of {len(order)} " in report_sections.defaults_paragraph(run)


def test_final_table_shows_every_test_metric_and_escapes_parameter_names(run_dir) -> None:
    run = report_data.load(run_dir)
    entries = [e | {"params": e["params"] | {"w<b>": 0.5}} for e in run.entries]
    table = report_sections.final_table(dataclasses.replace(run, entries=entries, tested=console.ledger_frame(entries)))
    assert "<th>test MAP@R</th>" in table and "<th>test R-Precision</th>" in table
    assert "w&lt;b&gt;=0.5" in table and "w<b>" not in table


def test_the_protocol_names_the_data_as_tested(run_dir, tmp_path) -> None:
    assert TESTED_DATA["sha256_16"] in report_sections.protocol_paragraph(report_data.load(run_dir))
    untested = tmp_path / "run"
    write_run(untested, kinds(3, 3), tested=False)
    assert "0123456789abcdef" in report_sections.protocol_paragraph(report_data.load(untested))  # config.json's, before any test


def _cmd() -> RunConfig:
    argv = ["--loss", "proxy_anchor"]
    return search.run_config(search.build_parser().parse_args(argv), argv)


def _study(*trials: tuple[dict, dict]) -> optuna.Study:
    """An in-memory study of complete trials, each (params, user attributes)."""
    study = optuna.create_study(direction="maximize")
    dists = _distributions()
    for params, attrs in trials:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5, user_attrs=attrs))
    return study


def test_the_defaults_trial_is_the_one_the_search_tagged_not_the_one_with_equal_numbers() -> None:
    defaults = default_config("proxy_anchor", OptimiserDefaults(lr=1e-3))
    other = {name: _point(d, 0.3) for name, d in _distributions().items()}
    tagged = _study((defaults, {}), (other, {PAPER_DEFAULTS_ATTR: True}))
    assert report_data.defaults_trial(tagged, _cmd()) == 1


def test_a_study_from_before_the_tag_finds_the_defaults_by_their_values() -> None:
    defaults = default_config("proxy_anchor", OptimiserDefaults(lr=1e-3))
    other = {name: _point(d, 0.3) for name, d in _distributions().items()}
    assert report_data.defaults_trial(_study((other, {}), (defaults, {})), _cmd()) == 1
    assert report_data.defaults_trial(_study((other, {})), _cmd()) is None


def test_a_config_json_from_another_version_is_refused_naming_the_keys(tmp_path, capsys) -> None:
    write_run(tmp_path / "run", kinds(complete=1, pruned=1), tested=False)
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    del config["command"]["workers"]
    path.write_text(json.dumps(config))
    assert report.main([str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'workers'" in err and len(err.strip().splitlines()) == 1


def test_the_report_formats_text_without_loading_torch() -> None:
    probe = "import results.report, sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "False"
