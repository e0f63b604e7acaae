"""The report's figures: matplotlib PNGs inlined as base64, one look per trial state shared by every plot."""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from results import tables  # noqa: E402
from results.report_data import Run  # noqa: E402
from trainables.config import SELECTION_METRIC  # noqa: E402
from trainables.run_config import RunConfig  # noqa: E402

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
SELECTED_COLORS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")
DEFAULTS_COLOR = "black"


def png(fig: plt.Figure, alt: str) -> str:
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


def asha_rungs(cmd: RunConfig) -> list[int]:
    """Epochs at which ASHA compares trials: grace · reduction^k below the budget."""
    rungs, t = [], cmd.grace_period
    while t < cmd.max_epochs:
        rungs.append(t)
        t *= cmd.reduction_factor
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
    ax.set_xlim(0.8, run.cmd.max_epochs + 0.2)
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
    params = tables.param_names(run.trials)
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


