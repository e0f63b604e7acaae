"""The loss tournament's standings: one row per loss, the winner chosen by validation, and whether the
test classes rank the losses as the validation classes did.

Each loss's entry is its selected config #1 (the selection's pick by validation Recall@1): its best
validation score, its test scores over the retrain seeds (mean, sample std and a 95 % t-interval of
the mean), its rank among the losses by validation and by test, and its gain over the loss's paper
defaults on validation. The test columns are shown, never used: the pick is by validation alone.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from results import tables
from results.select import ranked
from spaces import OptimiserDefaults, default_config
from trainables.config import SELECTION_METRIC
from trainables.study import LOSS_KEY

BEST = f"best_{SELECTION_METRIC}"
CONFIDENCE = 0.95
# Tested metrics the table shows besides Recall@K, with their heads.
OTHER_METRICS = {"map@r": "MAP@R"}


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The t-interval of the mean over seeds (Student's t, n-1 degrees of freedom); None for one seed,
    where the spread between seeds is unknown."""
    n = len(values)
    if n < 2:
        return None
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half)


def defaults_numbers(trials: pd.DataFrame, lr: float) -> dict[str, int | None]:
    """Per loss, the first trial that ran the paper's defaults (the search enqueues them first)."""
    found: dict[str, int | None] = {}
    for loss, group in trials.groupby(LOSS_KEY, sort=False):
        point = default_config(str(loss), OptimiserDefaults(lr=lr))
        columns = [f"param_{k}" for k in point]
        found[str(loss)] = next((int(row["number"]) for _, row in group.sort_values("number").iterrows()
                                 if all(c in row for c in columns) and tables.is_point(
                                     {k: row[f"param_{k}"] for k in point}, point)), None)
    return found


@dataclass(frozen=True)
class Standings:
    """The tournament table (one row per loss, in validation order) and what is said under it."""

    table: pd.DataFrame
    metrics: list[str]  # tested metric names shown, e.g. ["recall@1", "recall@2", "map@r"]
    seeds: int  # retrain seeds per loss (the fewest, should a loss have fewer)
    winner: str  # the loss validation picks
    tau: float | None  # Kendall's tau between the validation and test ranks; None before the test stage
    tau_p: float | None


def standings(trials: pd.DataFrame, tested: pd.DataFrame | None, lr: float) -> Standings:
    """Rank the losses: `trials` is trials.parquet, `tested` the ledger's rows (final.ledger_frame), both
    with a loss column; `lr` is the dataset's recipe lr, which the paper-default points are built with."""
    defaults = defaults_numbers(trials, lr)
    rows = []
    for loss, group in trials.groupby(LOSS_KEY, sort=False):
        order = ranked(group)
        if order.empty:
            continue  # nothing selectable: every trial failed, diverged or is unfinished
        pick = order.iloc[0]
        row: dict[str, Any] = {LOSS_KEY: loss, "trial": int(pick["number"]), "val": float(pick[BEST])}
        number = defaults[str(loss)]
        base = group[group["number"] == number].iloc[0] if number is not None else None
        row["defaults_val"] = float(base[BEST]) if base is not None and pd.notna(base[BEST]) else np.nan
        row["defaults_full_budget"] = bool(base["full_budget"]) if base is not None else False
        row["gain"] = row["val"] - row["defaults_val"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        raise RuntimeError("No loss has a selectable trial: every trial failed, diverged or is unfinished.")
    metrics: list[str] = []
    seeds = 0
    if tested is not None:
        top = tested[tested["config_rank"] == 1]
        metrics = [f"recall@{k}" for k in sorted(int(c.removeprefix("test_recall@"))
                                                 for c in top.columns if c.startswith("test_recall@"))]
        metrics += [m for m in OTHER_METRICS if f"test_{m}" in top.columns]
        by_loss = dict(list(top.groupby(LOSS_KEY)))
        seeds = min(len(g) for g in by_loss.values())
        for m in metrics:
            values = [by_loss[loss][f"test_{m}"].to_numpy(float) for loss in table[LOSS_KEY]]
            table[f"{m}_mean"] = [v.mean() for v in values]
            table[f"{m}_std"] = [v.std(ddof=1) if len(v) > 1 else np.nan for v in values]
            table[f"{m}_ci"] = [t_interval(v) for v in values]
        table["test_rank"] = table["recall@1_mean"].rank(ascending=False, method="min").astype(int)
    table["val_rank"] = table["val"].rank(ascending=False, method="min").astype(int)
    table = table.sort_values(["val_rank", LOSS_KEY]).reset_index(drop=True)
    tau = tau_p = None
    if tested is not None and len(table) > 1:
        found = stats.kendalltau(table["val"], table["recall@1_mean"])
        tau, tau_p = float(found.statistic), float(found.pvalue)
    return Standings(table=table, metrics=metrics, seeds=seeds, winner=str(table[LOSS_KEY].iloc[0]),
                     tau=tau, tau_p=tau_p)


def metric_head(metric: str) -> str:
    return OTHER_METRICS.get(metric) or metric.replace("recall@", "R@")


def test_cell(row: pd.Series, metric: str) -> str:
    """mean ± std [95 % interval] in %, or the mean alone for one seed."""
    mean, std, ci = 100 * row[f"{metric}_mean"], 100 * row[f"{metric}_std"], row[f"{metric}_ci"]
    if ci is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def gain_cell(row: pd.Series) -> str:
    if np.isnan(row["gain"]):
        return "n/a"
    return f"{100 * row['gain']:+.2f}" + ("" if row["defaults_full_budget"] else "*")


def rows_text(result: Standings) -> tuple[list[str], list[list[str]]]:
    """The table as plain-text cells (head, rows): the console and report.html show the same cells."""
    head = ["loss", "trial", "val R@1", "gain vs defaults"] + [f"test {metric_head(m)}" for m in result.metrics]
    head += ["val rank"] + (["test rank"] if result.metrics else [])
    body = []
    for _, row in result.table.iterrows():
        cells = [str(row[LOSS_KEY]), str(row["trial"]), f"{100 * row['val']:.2f}", gain_cell(row)]
        cells += [test_cell(row, m) for m in result.metrics]
        cells += [str(row["val_rank"])] + ([str(row["test_rank"])] if result.metrics else [])
        body.append(cells)
    return head, body


def notes(result: Standings) -> list[str]:
    """The sentences under the table: what the columns are, the validation's pick, the rank agreement."""
    lines = ["val R@1: config #1's best epoch on the validation classes in the search; gain vs defaults: "
             "its lead over the paper defaults' trial of the same loss, in points"
             + ("; *: the defaults were pruned by ASHA, so their score is over fewer epochs"
                if not result.table["defaults_full_budget"].all() else "") + "."]
    if result.metrics:
        lines.append(
            f"test: config #1 retrained on all training classes and tested once, mean ± sample std over "
            f"{result.seeds} seeds [95 % t-interval of the mean, {result.seeds - 1} degree"
            f"{'s' if result.seeds > 2 else ''} of freedom]."
            if result.seeds > 1 else
            "test: config #1 retrained with one seed and tested once: no std or confidence interval "
            "(the spread between seeds is unknown; --seeds 3 or more gives them).")
    top = result.table.iloc[0]
    pick = f"validation picks {result.winner} (val R@1 {100 * top['val']:.2f})"
    if result.metrics:
        pick += f"; its test R@1 is {test_cell(top, 'recall@1')}, shown, not used to choose."
    lines.append(pick)
    if result.tau is not None:
        n = len(result.table)
        lines.append(f"Kendall τ between the losses' validation and test ranks: {result.tau:+.2f} "
                     f"(n = {n} losses, p = {result.tau_p:.2g}). n is small: one swapped pair moves τ by "
                     f"{4 / (n * (n - 1)):.2f}, so this is how this run's validation classes ranked the losses "
                     "against its test classes, not a general finding.")
    return lines


def print_standings(result: Standings, echo: Callable[[str], None]) -> None:
    """The table, columns padded to their widest cell, then the notes."""
    head, body = rows_text(result)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    for cells in [head, *body]:
        echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    for line in notes(result):
        echo(line)
