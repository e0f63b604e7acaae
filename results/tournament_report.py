"""report.html of a loss tournament: the standings, each loss's validation curves, what each loss cost.

A tournament has one study per loss; the single-loss report's per-study sections (history, slices,
importance) are each loss's own search and are left to its study in study.db (optuna-dashboard).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from results import ledger, tables
from results.console import ledger_frame
from results.report import page
from results.report_data import ReportError
from results.report_figures import DEFAULTS_COLOR, SELECTED_COLORS, STATE_STYLE, png
from results.report_sections import duration, html_table, provenance_section
from trainables.run_config import RunConfig
from results.tournament import Standings, defaults_numbers, notes, rows_text, standings
from trainables.config import SELECTION_METRIC
from trainables.study import LOSS_KEY

CURVE = f"{SELECTION_METRIC}_curve"
PANELS_PER_ROW = 4


def curves_by_loss(trials: pd.DataFrame, result: Standings, defaults: dict[str, int | None],
                   max_epochs: int) -> plt.Figure:
    """One panel per loss, in validation order, on one y scale: every trial's validation curve (complete solid,
    pruned dashed), the loss's pick (config #1) thick, its paper defaults black."""
    losses = list(result.table[LOSS_KEY])
    picks = dict(zip(result.table[LOSS_KEY], result.table["trial"]))
    rows = math.ceil(len(losses) / PANELS_PER_ROW)
    cols = min(len(losses), PANELS_PER_ROW)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), sharey=True, squeeze=False)
    for ax, loss in zip(axes.flat, losses):
        for _, t in trials[trials[LOSS_KEY] == loss].iterrows():
            curve = 100 * np.asarray(t[CURVE], dtype=float)
            if not len(curve):
                continue
            epochs = np.arange(1, len(curve) + 1)
            if t["number"] == picks[loss]:
                ax.plot(epochs, curve, lw=2.5, color=SELECTED_COLORS[0], zorder=4)
            elif t["number"] == defaults.get(loss):
                ax.plot(epochs, curve, lw=1.8, color=DEFAULTS_COLOR, zorder=3)
            else:
                style = STATE_STYLE["complete" if t["full_budget"] else "pruned"]
                ax.plot(epochs, curve, lw=1, ls=style["ls"], color=style["color"], alpha=0.8,
                        marker="o", ms=3, markevery=[len(curve) - 1])  # a trial pruned at epoch 1 is one point
        ax.set_title(loss, fontsize=10)
        ax.set_xlim(0.8, max_epochs + 0.2)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(losses):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("val R@1 (%)")
    fig.suptitle("Validation curves per loss: config #1 orange, paper defaults black, "
                 "complete trials blue, pruned grey dashed", fontsize=10)
    fig.tight_layout()
    return fig


def cost_by_loss(trials: pd.DataFrame, final: pd.DataFrame | None) -> str:
    """Per loss: its trials and their states, trial-epochs, trial time, and retrain time (configs × seeds)."""
    head = ["loss", "trials", "trial-epochs", "trial time", "retrain time"]
    body = []
    for loss, group in trials.groupby(LOSS_KEY, sort=True):
        states = ", ".join(f"{n} {s}" for s, n in group["state"].value_counts().items())
        retrain = (duration(float(final.loc[final[LOSS_KEY] == loss, "train_seconds"].sum()))
                   if final is not None else "n/a")
        body.append([html.escape(str(loss)), f"{len(group)} ({states})", str(int(group["epochs"].sum())),
                     duration(float(group["seconds"].sum())), retrain])
    return (html_table(head, body)
            + "<p class=caption>Trial time: what the loss's trials ran on their workers (Tune's time_total_s); the "
              "losses shared the workers, so there is no wall-clock per loss.</p>")


def tournament_section(trials: pd.DataFrame, result: Standings, defaults: dict[str, int | None],
                       final: pd.DataFrame | None, max_epochs: int) -> str:
    head, body = rows_text(result)
    table = html_table(head, [[html.escape(c) for c in row] for row in body])
    said = "".join(f"<p class=caption>{html.escape(line)}</p>" for line in notes(result))
    return (f"<p><b>Validation picks {html.escape(result.winner)}.</b></p>" + table + said
            + png(curves_by_loss(trials, result, defaults, max_epochs), "validation curves per loss")
            + "<h3>Cost per loss</h3>" + cost_by_loss(trials, final))


def render_tournament(run_dir: Path) -> str:
    """The whole report.html of a tournament's run directory."""
    config = json.loads((run_dir / "config.json").read_text())
    try:
        cmd = RunConfig.from_json(config["command"])
    except ValueError as err:
        raise ReportError(f"{run_dir / 'config.json'}: {err}") from None
    trials = tables.run_trials(run_dir, cmd.losses, cmd.max_epochs)
    if trials.empty:
        raise ReportError(f"{run_dir} has no trials yet; continue it with search.py --resume --out {run_dir}.")
    entries = ledger.read(run_dir / ledger.LEDGER_NAME)
    final_path = run_dir / "final.parquet"
    final = pd.read_parquet(final_path) if final_path.exists() else None
    result = standings(trials, ledger_frame(entries) if entries else None, cmd.lr)
    untested = "" if entries else "<p class=note>No test result yet: the run stopped before its test stage.</p>"
    section = tournament_section(trials, result, defaults_numbers(trials, cmd.lr), final, cmd.max_epochs)
    return page(f"dmltune: a tournament of {len(cmd.losses)} losses on {cmd.dataset}", run_dir,
                [("Tournament", untested + section), ("Provenance", provenance_section(config, cmd))])
