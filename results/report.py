"""report.html: what a run did, what it found and what it cost, in one self-contained file.

    python -m results.report runs/<name>      # (re)write runs/<name>/report.html

search.py writes it at the end of every run. It reads only the run directory (config.json,
study.db, final.parquet, test_ledger.jsonl), so it also describes an interrupted or untested run.
Plots are matplotlib PNGs inlined as base64: the file can be mailed or archived on its own.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from results import ledger, tables  # noqa: E402
from results.final import AUTO, ledger_frame, param_text, pm_text, recall_ks  # noqa: E402
from spaces import OptimiserDefaults, default_config  # noqa: E402
from trainables.config import SELECTION_METRIC  # noqa: E402
from trainables.study import DIVERGED, STUDY_FILE  # noqa: E402

REPORT_NAME = "report.html"
# fANOVA on fewer full-budget trials than this is noise (a forest fitted to a handful of points).
MIN_IMPORTANCE_TRIALS = 4
# One look per shown trial state (`shown_states`), shared by every plot and its legend: the mark on
# scatters and at the end of a curve (filled or hollow), and the curve's line style.
STATE_STYLE = {
    "complete": {"color": "tab:blue", "marker": "o", "filled": True, "ls": "-", "label": "complete (full budget)"},
    "pruned": {"color": "0.55", "marker": "o", "filled": False, "ls": "--", "label": "pruned by ASHA"},
    "diverged": {"color": "tab:olive", "marker": "v", "filled": True, "ls": "--", "label": "diverged (loss NaN/inf)"},
    "unfinished": {"color": "tab:cyan", "marker": "s", "filled": False, "ls": "-.",
                   "label": "unfinished (running or waiting)"},
    "failed": {"color": "tab:red", "marker": "x", "filled": True, "ls": "-", "label": "failed"},
    "rerun": {"color": "0.75", "marker": "+", "filled": True, "ls": ":", "label": "interrupted, config run again"},
}
# Tested metrics other than Recall@K, as the final table heads them (any other is shown by its own name).
METRIC_NAMES = {"map@r": "MAP@R", "r_precision": "R-Precision", "nmi": "NMI"}
SELECTED_COLORS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
DEFAULTS_COLOR = "black"


@dataclass
class Run:
    """Everything the report shows, read once from the run directory."""

    dir: Path
    config: dict[str, Any]
    study: optuna.Study
    trials: pd.DataFrame  # tables.trials_frame, plus the state the report shows ("shown", see shown_states)
    entries: list[dict[str, Any]]
    tested: pd.DataFrame | None  # the ledger's entries as final.ledger_frame rows; None before the test stage
    final: pd.DataFrame | None  # final.parquet (retrain timings); None before the test stage
    defaults_trial: int | None  # the trial that ran the paper's defaults
    selected: list[int]  # trial numbers retrained and tested, by rank; empty before the test stage

    @property
    def cmd(self) -> dict[str, Any]:
        return self.config["command"]


class ReportError(RuntimeError):
    """The directory holds nothing to report on; the message says what is missing."""


def load(run_dir: Path) -> Run:
    config_path = run_dir / "config.json"
    if not config_path.exists() or not (run_dir / STUDY_FILE).exists():
        raise ReportError(f"{run_dir} is not a dmltune run directory (config.json and study.db expected); "
                          "give the --out of a run.")
    config = json.loads(config_path.read_text())
    study = tables.load_study(run_dir)
    trials = tables.trials_frame(study, config["command"]["max_epochs"])
    if trials.empty:
        raise ReportError(f"{run_dir} has no trials yet; continue it with search.py --resume --out {run_dir}.")
    trials["shown"] = shown_states(trials)
    entries = ledger.read(run_dir / ledger.LEDGER_NAME)
    tested = ledger_frame(entries) if entries else None
    configs = tested.drop_duplicates("config_rank").sort_values("config_rank") if tested is not None else None
    final_path = run_dir / "final.parquet"
    return Run(dir=run_dir, config=config, study=study, trials=trials, entries=entries, tested=tested,
               final=pd.read_parquet(final_path) if final_path.exists() else None,
               defaults_trial=defaults_trial(study, config["command"]),
               selected=[] if configs is None else [int(t) for t in configs["trial_number"]])


def shown_states(trials: pd.DataFrame) -> pd.Series:
    """Each trial's state as the report shows it: Optuna's, except that a diverged trial (told to Optuna as
    PRUNED, its reason in the `diverged` column) is "diverged", and running or waiting ones are "unfinished"."""
    state = trials["state"].replace({"running": "unfinished", "waiting": "unfinished"})
    return state.mask(trials[DIVERGED].notna(), "diverged")


def defaults_trial(study: optuna.Study, cmd: dict[str, Any]) -> int | None:
    """The first trial whose params are the paper's defaults (search.py enqueues them first)."""
    defaults = default_config(cmd["loss"], OptimiserDefaults(lr=cmd["lr"]))
    for t in study.get_trials(deepcopy=False):
        if t.params.keys() == defaults.keys() and all(
                np.isclose(t.params[k], v) if isinstance(v, float) else t.params[k] == v for k, v in defaults.items()):
            return t.number
    return None


# ---- figures -------------------------------------------------------------------------------------

def _png(fig: plt.Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _mark(state: str) -> dict[str, Any]:
    """Line2D keywords of a state's mark (hollow states show only its outline)."""
    s = STATE_STYLE[state]
    return {"marker": s["marker"], "color": s["color"], "mfc": s["color"] if s["filled"] else "none", "mew": 1.5}


def _legend_handles(drawn: set[str], extra: list[Any], curves: bool = False) -> list[Any]:
    """One entry per trial state drawn (as a curve or a scatter mark), in STATE_STYLE's order, then `extra`."""
    return [Line2D([], [], ls=s["ls"] if curves else "", lw=1.4, ms=6, label=s["label"], **_mark(state))
            for state, s in STATE_STYLE.items() if state in drawn] + extra


def _scatter_states(ax: plt.Axes, points: pd.DataFrame, x: str, y: str, size: float) -> set[str]:
    """Each row of `points` as its shown state's mark at (x, y); returns the states drawn, for the legend."""
    for state, part in points.groupby("shown"):
        s = STATE_STYLE[state]
        fill = {"color": s["color"]} if s["filled"] else {"facecolors": "none", "edgecolors": s["color"]}
        ax.scatter(part[x], part[y], s=size, marker=s["marker"], linewidths=1.5, zorder=3, **fill)
    return set(points["shown"])


def _tested_label(run: Run, rank: int, number: int) -> str:
    return f"tested #{rank} (trial {number}{', paper defaults' if number == run.defaults_trial else ''})"


def _rank_color(rank: int) -> str:
    return SELECTED_COLORS[(rank - 1) % len(SELECTED_COLORS)]


def _special_legend(run: Run, curves: bool) -> list[Any]:
    """Legend entries for the tested configs and the paper's defaults, as drawn: curves or scatter marks."""
    entries = [Line2D([], [], lw=3, marker="o", color=_rank_color(rank), label=_tested_label(run, rank, number))
               if curves else Line2D([], [], marker="o", ms=11, ls="", mfc="none", mew=2, color=_rank_color(rank),
                                     label=_tested_label(run, rank, number))
               for rank, number in enumerate(run.selected, 1)]
    # A tested defaults trial is drawn as its tested curve; on scatters it is also starred.
    if run.defaults_trial is not None and not (curves and run.defaults_trial in run.selected):
        entries.append(Line2D([], [], lw=2 if curves else 0, marker="*", ms=10 if curves else 12, color=DEFAULTS_COLOR,
                              label=f"paper defaults (trial {run.defaults_trial})"))
    return entries


def _overlay_special(ax: plt.Axes, run: Run, x_of: Any, y_of: Any) -> None:
    """Star the defaults and ring the tested configs on a per-trial scatter."""
    rows = run.trials.set_index("number")
    best = f"best_{SELECTION_METRIC}"
    if run.defaults_trial is not None and pd.notna(rows.loc[run.defaults_trial, best]):
        ax.plot(x_of(run.defaults_trial), y_of(run.defaults_trial), marker="*", ms=14, color=DEFAULTS_COLOR,
                ls="", zorder=5)
    for rank, number in enumerate(run.selected, 1):
        ax.plot(x_of(number), y_of(number), marker="o", ms=13, mfc="none", mew=2, ls="", zorder=6,
                color=_rank_color(rank))


def history_figure(run: Run) -> plt.Figure:
    """Each trial's best validation R@1 in the order trials started, and the best full-budget value so far.

    A failed trial without a score stands at 0; an unfinished one without a score is left out (`unscored_note`).
    """
    trials, best = run.trials, f"best_{SELECTION_METRIC}"
    fig, ax = plt.subplots(figsize=(10, 4.2))
    points = trials.assign(y=100 * trials[best].where(trials[best].notna() | (trials["shown"] != "failed"), 0.0))
    drawn = _scatter_states(ax, points[points["y"].notna()], "number", "y", 36)
    complete = trials[trials["shown"] == "complete"].sort_values("number")
    if len(complete):  # drawn to the last trial: later trials did not beat it at the full budget
        running = 100 * complete[best].cummax()
        ax.step([*complete["number"], trials["number"].max()], [*running, running.iloc[-1]], where="post",
                color="tab:blue", alpha=0.6)
    value = trials.set_index("number")[best]
    _overlay_special(ax, run, lambda n: n, lambda n: 100 * value[n])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.04, y=0.1)
    ax.set_xlabel("trial number (order proposed)")
    ax.set_ylabel("best validation Recall@1 (%)")
    ax.set_title("Optimisation history (pruned trials: best value before ASHA stopped them)")
    ax.grid(alpha=0.3)
    ax.legend(handles=_legend_handles(drawn, _special_legend(run, curves=False) + ([Line2D(
        [], [], color="tab:blue", alpha=0.6, label="best complete so far")] if len(complete) else [])),
        loc="best", fontsize=9, framealpha=0.9)
    return fig


def unscored_note(run: Run) -> str:
    """The trials no plot places: no validation score, and not failed (failed ones stand at 0 in the history)."""
    trials = run.trials
    missing = trials[trials[f"best_{SELECTION_METRIC}"].isna() & (trials["shown"] != "failed")]
    if missing.empty:
        return ""
    listed = ", ".join(f"{n} ({state})" for n, state in zip(missing["number"], missing["shown"]))
    return f"<p class=caption>Not drawn: trial(s) {listed}, which had reported no validation score.</p>"


def asha_rungs(cmd: dict[str, Any]) -> list[int]:
    """Epochs at which ASHA compares trials: grace · reduction^k below the budget."""
    rungs, t = [], cmd["grace_period"]
    while t < cmd["max_epochs"]:
        rungs.append(t)
        t *= cmd["reduction_factor"]
    return rungs


def curves_figure(run: Run) -> plt.Figure:
    """Every trial's validation curve in its state's style (complete solid blue, pruned grey and dashed, each
    stopped trial's mark where it stopped), tested configs and the defaults highlighted."""
    curve_col = f"{SELECTION_METRIC}_curve"
    fig, ax = plt.subplots(figsize=(10, 4.8))
    special = set(run.selected) | {run.defaults_trial}
    drawn: set[str] = set()
    for _, t in run.trials.iterrows():
        curve = 100 * np.asarray(t[curve_col], dtype=float)
        if not len(curve) or t["number"] in special:
            continue
        full = t["shown"] == "complete"  # marked at every epoch; the others only where they stopped
        ax.plot(np.arange(1, len(curve) + 1), curve, ls=STATE_STYLE[t["shown"]]["ls"], lw=1.4 if full else 1.2,
                alpha=0.7 if full else 0.8, ms=3 if full else 7, markevery=None if full else [len(curve) - 1],
                **_mark(t["shown"]))
        drawn.add(t["shown"])
    rows = run.trials.set_index("number")
    for rank, number in enumerate(run.selected, 1):
        curve = 100 * np.asarray(rows.loc[number, curve_col], dtype=float)
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=3, marker="o", ms=5, zorder=4, color=_rank_color(rank))
    if run.defaults_trial is not None and run.defaults_trial not in run.selected:
        curve = 100 * np.asarray(rows.loc[run.defaults_trial, curve_col], dtype=float)
        ax.plot(np.arange(1, len(curve) + 1), curve, lw=2, color=DEFAULTS_COLOR, marker="*", ms=10, zorder=4)
    for rung in asha_rungs(run.cmd):
        ax.axvline(rung, color="0.3", lw=0.8, ls=":")
    ax.set_xlim(0.8, run.cmd["max_epochs"] + 0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (dotted: ASHA rungs)")
    ax.set_ylabel("validation Recall@1 (%)")
    ax.set_title("Validation curves of every trial (a mark ends the curve of a trial that stopped early)")
    ax.grid(alpha=0.3)
    ax.legend(handles=_legend_handles(drawn, _special_legend(run, curves=True), curves=True), loc="best", fontsize=9,
              framealpha=0.9)
    return fig


def slices_figure(run: Run) -> plt.Figure | None:
    """One panel per searched parameter over its whole search range, against the trial's best validation R@1."""
    params = [c.removeprefix("param_") for c in tables.param_columns(run.trials)]
    if not params:
        return None
    ranges = {name: d for t in run.study.get_trials(deepcopy=False) for name, d in t.distributions.items()}
    cols = min(3, len(params))
    rows_n = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(10, 2.9 * rows_n + 0.8), squeeze=False, sharey=True)
    best = f"best_{SELECTION_METRIC}"
    scored = run.trials[run.trials[best].notna()].set_index("number")
    scored = scored.assign(y=100 * scored[best])
    drawn: set[str] = set()
    for ax, name in zip(axes.flat, params):
        column = f"param_{name}"
        drawn |= _scatter_states(ax, scored, column, "y", 30)
        _overlay_special(ax, run, lambda n, c=column: scored.loc[n, c], lambda n: 100 * scored.loc[n, best])
        dist = ranges.get(name)
        if getattr(dist, "log", False):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(LogFormatterSciNotation())
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled decades only: minor labels collide
        if hasattr(dist, "low"):
            pad = (dist.high / dist.low) ** 0.03 if getattr(dist, "log", False) else 0.03 * (dist.high - dist.low)
            ax.set_xlim(*((dist.low / pad, dist.high * pad) if getattr(dist, "log", False)
                          else (dist.low - pad, dist.high + pad)))
        ax.set_title(f"{name}{' (log)' if getattr(dist, 'log', False) else ''}", fontsize=11)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("best val R@1 (%)")
    for ax in axes.flat[len(params):]:
        ax.set_visible(False)
    axes[0, 0].margins(y=0.1)
    handles = _legend_handles(drawn, _special_legend(run, curves=False))
    fig.suptitle("Parameter slices: each trial's value (x, whole search range) against its best validation "
                 "Recall@1", y=1.0)
    fig.tight_layout(rect=(0, 0.7 / (2.9 * rows_n + 0.8), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    return fig


def importances(study: optuna.Study, complete: int) -> dict[str, float] | str:
    """fANOVA importances over the `complete` full-budget trials, or why there are none (a sentence)."""
    if complete < MIN_IMPORTANCE_TRIALS:
        return (f"{complete} trial(s) ran the full budget, and importance over fewer than {MIN_IMPORTANCE_TRIALS} "
                "is noise; pruned trials are left out because their scores come from shorter budgets. "
                "Run more --trials to get it.")
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as err:  # e.g. every complete trial has the same score
        return f"optuna.importance failed on this study: {err}."
    return dict(found) or "the full-budget trials share no searched parameter."


def importance_figure(found: dict[str, float], complete: int) -> plt.Figure:
    names = list(found)[::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.2))
    ax.barh(names, [found[n] for n in names], color="tab:blue")
    for y, n in enumerate(names):
        ax.text(found[n], y, f" {found[n]:.2f}", va="center", fontsize=10)
    ax.set_xlim(0, max(found.values()) * 1.18)
    ax.set_xlabel("share of validation R@1 variance (fANOVA)")
    ax.set_title(f"Hyperparameter importance over the {complete} full-budget trials")
    ax.grid(axis="x", alpha=0.3)
    return fig


def importance_section(run: Run) -> str:
    complete = int(run.trials["state"].eq("complete").sum())  # the trials Optuna's evaluator reads: COMPLETE ones
    found = importances(run.study, complete)
    if isinstance(found, str):
        return f"<p class=note>Not computed: {html.escape(found)}</p>"
    return (_png(importance_figure(found, complete), "hyperparameter importance")
            + f"<p class=caption>optuna.importance with fANOVA (a random forest, seed 0) over the {complete} trials "
              "that ran the full budget; with few trials the shares are rough.</p>")


# ---- text and tables -----------------------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _pm(values: pd.Series) -> str:
    """A metric in % as mean ± sample std over seeds (the mean alone for one seed)."""
    return pm_text(100 * values.to_numpy(), "&nbsp;±&nbsp;")


def _classes(ids: list[int]) -> str:
    shown = ", ".join(str(c) for c in ids[:12])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > 12 else "")


def _validation_sentence(cmd: dict[str, Any], split: dict[str, Any]) -> tuple[str, int]:
    """How validation classes were held out (fixed split or k folds), and the number of training classes."""
    if "folds" in split:  # --protocol kfold
        folds = split["folds"]
        train = len(folds[0]["fit"]) + len(folds[0]["val"])
        return (f"The training classes were dealt into <b>{len(folds)} validation folds</b> (seed {cmd['seed']}, "
                f"~{len(folds[0]['val'])} classes each); a trial trained one model per fold on the first "
                f"{cmd['search_folds']} "
                "folds, each on the other folds' classes, and was scored by their mean validation Recall@1."), train
    fit, val = split["fit"], split["val"]
    return (f"A random {100 * cmd['val_fraction']:.0f}% of the training classes (seed {cmd['seed']}) became "
            f"<b>validation classes</b> ({len(val)}: {_classes(val)}); the other {len(fit)} <b>fit classes</b> "
            "trained every trial."), len(fit) + len(val)


def protocol_paragraph(run: Run) -> str:
    cmd, split = run.cmd, run.config["split"]
    # The data as tested: the ledger's fingerprint, which differs from config.json's if a test image was repaired.
    data = run.entries[0]["dataset"] if run.entries else run.config["dataset"]
    validation, train = _validation_sentence(cmd, split)
    test = split["test"]
    rule = ("each config's best validation epoch (<code>--final-epochs auto</code>)" if cmd["final_epochs"] == AUTO
            else f"{cmd['final_epochs']} epochs (fixed in advance)")
    configs = int((run.trials["shown"] != "rerun").sum())  # a rerun trial's config ran again as another trial
    tested = (f"tested once on {html.escape(run.entries[0]['time'])}, {len(run.entries)} ledger entries"
              if run.entries else "<b>not tested yet</b>: the test classes have not been opened")
    return (
        f"<p><b>{html.escape(cmd['dataset'])}</b> ({data['items']} images, fingerprint "
        f"<code>{html.escape(data['sha256_16'])}</code>) splits by class: {train} training classes, "
        f"{len(test)} test classes. {validation} <b>Search</b>: {configs} configs of "
        f"<b>{html.escape(cmd['loss'])}</b> proposed by Optuna TPE (the paper's defaults first), trained as Ray "
        f"Tune trials for up to {cmd['max_epochs']} epochs and scored by validation Recall@1 after every epoch; "
        f"ASHA (grace {cmd['grace_period']}, reduction {cmd['reduction_factor']}) stopped weak trials and Optuna "
        f"recorded them as pruned. <b>Select</b>: the top {cmd['top_k']} by validation Recall@1, full-budget "
        f"trials first. <b>Retrain</b> each on all {train} training classes for {rule} with "
        f"{cmd['seeds']} seed(s). <b>Test</b>: the {len(test)} test classes ({_classes(test)}) were opened only "
        f"by the test stage; {tested}.</p>"
    )


def defaults_paragraph(run: Run) -> str:
    """How the paper's defaults did on validation (and on test when they were among the tested configs)."""
    if run.defaults_trial is None:
        return "<p>The paper's defaults were not among the trials (a resumed study adds them only at its start).</p>"
    best = f"best_{SELECTION_METRIC}"
    rows = run.trials.set_index("number")
    t, number = rows.loc[run.defaults_trial], run.defaults_trial
    state, epochs = t["shown"], t["epochs"]
    if state == "diverged":  # the trainer's reason names the epoch and the config
        return (f"<p>The <b>paper's defaults</b> (trial {number}) diverged, so they were never selected: "
                f"{html.escape(str(t[DIVERGED]).rstrip('.'))}.</p>")
    if pd.isna(t[best]):
        why = ("had not finished an epoch when this report was written" if state == "unfinished"
               else f"{state} before their first epoch")
        return f"<p>The paper's defaults (trial {number}) {why}: no validation score.</p>"
    how = {"complete": "ran the full budget", "pruned": f"were pruned by ASHA after epoch {epochs}",
           "failed": f"failed after epoch {epochs}",
           "unfinished": f"had run {epochs} epoch(s) when this report was written"}[state]
    order = list(tables.ranked(run.trials)["number"])
    rank = (f"rank {order.index(number) + 1} of {len(order)} in the selection order (full-budget trials first)"
            if number in order else "not ranked: only complete and pruned trials are selected")
    text = (f"<p>The <b>paper's defaults</b> (trial {number}) reached validation Recall@1 "
            f"<b>{_pct(t[best])}</b> at epoch {int(t['best_epoch'])} and {how}: {rank}. ")
    if run.selected:
        top = rows.loc[run.selected[0]]
        if run.defaults_trial in run.selected:
            text += f"They were retrained and tested as config #{run.selected.index(run.defaults_trial) + 1}. "
        else:
            text += (f"The selected config #1 (trial {run.selected[0]}) scored {_pct(top[best])} "
                     f"({100 * (top[best] - t[best]):+.2f} points); the defaults were not retrained, so their test "
                     "score is unknown: testing them as well would be a second look at the test set. ")
    return text + "</p>"


def final_table(run: Run) -> str:
    """Validation (search) against test (retrain) per tested config, mean ± std over seeds."""
    frame = run.tested
    if frame is None:
        return "<p class=note>No test result yet: the run stopped before its test stage.</p>"
    ks = recall_ks(frame)
    others = [c.removeprefix("test_") for c in frame.columns
              if c.startswith("test_") and not c.startswith("test_recall@")]
    metrics = [f"test_recall@{k}" for k in ks] + [f"test_{m}" for m in others]
    params = tables.param_columns(frame)
    head = ["config", "trial", "parameters", "retrain epochs", "seeds", "val R@1 (search)"]
    head += [f"test R@{k}" for k in ks] + [f"test {METRIC_NAMES.get(m, m)}" for m in others]
    body = []
    for rank, group in frame.groupby("config_rank"):
        first = group.iloc[0]
        label = f"#{rank}" + (" (paper defaults)" if int(first["trial_number"]) == run.defaults_trial else "")
        cells = [label, str(first["trial_number"]), "<span class=params>" + ", ".join(
                     html.escape(param_text(c.removeprefix('param_'), first[c])) for c in params if pd.notna(first[c]))
                 + "</span>", str(first["epochs"]), str(len(group)), _pct(first[f"best_{SELECTION_METRIC}"])]
        cells += [_pm(group[col]) for col in metrics]
        body.append(cells)
    top = frame[frame["config_rank"] == 1]
    seeds = f"{len(top)} seeds" if len(top) > 1 else "1 seed"
    headline = (f"<p><b>Result: test Recall@1 {_pm(top['test_recall@1'])}</b> ({seeds}) for config #1 "
                f"(trial {top['trial_number'].iloc[0]}), chosen by its validation Recall@1 of "
                f"{_pct(top[f'best_{SELECTION_METRIC}'].iloc[0])} in the search.</p>")
    return (headline + _html_table(head, body)
            + "<p class=caption>Recall in %. val R@1: the search trial's best epoch on the validation classes "
              "(trained on the fit classes only). test: retrained on all training classes, mean ± sample std "
              "over seeds. Config #1 is the result; the others show whether the validation ranking holds on "
              "the test classes and must not be chosen among by their test score.</p>")


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def cost_table(run: Run) -> str:
    """Trial-epochs, time and the epochs ASHA saved against running every trial to the full budget.

    Savings and the time per epoch come from the trials that ended as ASHA decided (complete or pruned):
    the epochs failed, diverged and unfinished trials never ran were not saved by ASHA, and an unfinished
    trial has no duration yet.
    """
    trials, cmd = run.trials, run.cmd
    ran = int(trials["epochs"].sum())
    normal = trials[trials["shown"].isin(["complete", "pruned"])]
    normal_ran = int(normal["epochs"].sum())
    full = len(normal) * cmd["max_epochs"]
    trial_seconds = float(trials["seconds"].sum())
    finished = [t for t in run.study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    wall = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds() \
        if finished else float("nan")
    per_epoch = float(normal["seconds"].sum()) / normal_ran if normal_ran else float("nan")
    states = ", ".join(f"{n} {s}" for s, n in trials["shown"].value_counts().items())
    rows = [
        ["trials", f"{len(trials)} ({states})"],
        ["trial-epochs run", f"{ran}"],
        ["trial-epochs if every complete or pruned trial ran the full budget",
         f"{full} ({len(normal)} × {cmd['max_epochs']})"],
        ["epochs ASHA saved", f"{full - normal_ran} ({100 * (full - normal_ran) / max(full, 1):.0f}%; ≈ "
                              f"{_duration((full - normal_ran) * per_epoch)} of trial time at {per_epoch:.1f} s per "
                              "epoch)"],
        ["search wall-clock (first trial start to last trial end)", _duration(wall)],
        ["trial time (sum over trials)", _duration(trial_seconds)],
        ["CPU core-hours reserved by trials", f"{trial_seconds * cmd['cpus_per_trial'] / 3600:.3g} "
                                              f"({cmd['cpus_per_trial']:g} per trial)"],
        ["GPU-hours reserved by trials", f"{trial_seconds * cmd['gpus_per_trial'] / 3600:.3g} "
                                         f"({cmd['gpus_per_trial']:g} per trial)"],
    ]
    if run.final is not None:
        device = run.entries[0].get("device", "") if run.entries else ""
        rows.append(["retrain (sum over configs × seeds)",
                     f"{_duration(float(run.final['train_seconds'].sum()))}, {int(run.final['epochs'].sum())} epochs"
                     + (f" on {html.escape(device)}" if device else "")])
    return (_html_table(["", ""], rows, header=False)
            + "<p class=caption>Trial time is what each trial ran on its worker (Tune's time_total_s), summed "
              "over drivers when the run was resumed; the wall-clock includes any pause between drivers. "
              "Reserved hours multiply trial time by --cpus-per-trial / --gpus-per-trial.</p>")


def provenance_section(run: Run) -> str:
    code = run.config.get("code") or {}
    revision = (f"{code['commit'][:12]}{' (uncommitted changes)' if code.get('dirty') else ''}"
                if code else "not a git checkout")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(run.config.get("versions", {}).items()))
    split = run.config["split"]
    named = {f"fold {i + 1} validation": f["val"] for i, f in enumerate(split.get("folds", []))} | {
        name: ids for name, ids in split.items() if name != "folds"}
    ids = "".join(f"<p><b>{html.escape(name)}</b> ({len(v)}): {', '.join(map(str, v))}</p>"
                  for name, v in named.items())
    argv = " ".join(run.cmd.get("argv", []))
    return (f"<p>Command: <code>python search.py {html.escape(argv)}</code><br>Code revision: "
            f"<code>{html.escape(revision)}</code><br>Versions: {html.escape(versions)}</p>"
            f"<details><summary>Class ids of every split</summary>{ids}</details>"
            f"<p>Each test evaluation is in <code>{ledger.LEDGER_NAME}</code> with its config, hash, seed, "
            "dataset fingerprint and these class ids; the study is <code>study.db</code> "
            "(<code>optuna-dashboard sqlite:///study.db</code> opens it).</p>")


def _html_table(head: list[str], body: list[list[str]], header: bool = True) -> str:
    """A table of plain-text headers and raw-HTML cells: escaping what a cell shows is the caller's job."""
    thead = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if header else ""
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table>{thead}{rows}</table>"


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1060px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.93em; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f2f2f2; } img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { background: #fff7e0; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
.params { display: inline-block; min-width: 13em; }
.caption { color: #555; font-size: 0.92em; } .sub { color: #555; margin-top: 0; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def render(run: Run) -> str:
    cmd = run.cmd
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections = [
        ("Protocol", protocol_paragraph(run)),
        ("Result", final_table(run) + defaults_paragraph(run)),
        ("Optimisation history", _png(history_figure(run), "optimisation history") + unscored_note(run)),
        ("Validation curves", _png(curves_figure(run), "validation curves")),
        ("Searched parameters", _png(slices, "parameter slices") if (slices := slices_figure(run))
         else "<p class=note>No searched parameters.</p>"),
        ("Hyperparameter importance", importance_section(run)),
        ("Cost", cost_table(run)),
        ("Provenance", provenance_section(run)),
    ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = f"dmltune: {cmd['loss']} on {cmd['dataset']}"
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=sub>Run directory <code>{html.escape(str(run.dir))}</code>, report written {now}</p>"
            f"{body}</body></html>")


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html (atomically) and return its path."""
    text = render(load(Path(run_dir)))
    path = Path(run_dir) / REPORT_NAME
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m results.report", description="(Re)write a run's report.html.")
    parser.add_argument("run_dir", type=Path, help="a run directory (search.py --out)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dir))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
