"""The result as the console shows it: the final table, and a tested study's recorded result.

Text only (pandas, no torch), so the report and the ledger's refusal format results without loading
the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from results.tables import param_cells, row_params
from trainables.config import SELECTION_METRIC
from trainables.study import LOSS_KEY


def ledger_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Ledger entries as final.parquet-shaped rows, so one table printer serves both."""
    return pd.DataFrame([{
        LOSS_KEY: e["selection"].get(LOSS_KEY), "config_rank": e["selection"]["rank"],
        "trial_number": e["selection"]["trial"], "seed": e["seed"],
        "config_hash": e["config_hash"], "epochs": e["epochs"],
        f"best_{SELECTION_METRIC}": e["selection"][SELECTION_METRIC],
        **param_cells(e["params"]), **{f"test_{k}": v for k, v in e["metrics"].items()},
    } for e in entries])


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; std is 0 for a single seed."""
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def pm_text(values: np.ndarray, sep: str = " ± ") -> str:
    """Values (already in %) as mean ± sample std over seeds, or the mean alone for one seed."""
    mean, std = mean_std(values)
    return f"{mean:.2f}{sep}{std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def param_text(name: str, value: Any) -> str:
    """One searched parameter as the result tables show it: floats to 4 significant digits."""
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"


def recall_ks(frame: pd.DataFrame) -> list[int]:
    return sorted(int(c.removeprefix("test_recall@")) for c in frame.columns if c.startswith("test_recall@"))


def print_final(final: pd.DataFrame, ks: list[int], echo: Any) -> None:
    """Per config: params, search validation R@1, retrain epochs, test Recall@K as mean ± std over seeds."""
    # A tournament's configs are ranked within their loss: "ms #1".
    ranks = "#" + final["config_rank"].astype(str)
    labels = ranks if LOSS_KEY not in final or final[LOSS_KEY].nunique() < 2 else final[LOSS_KEY] + " " + ranks
    width = max(6, labels.str.len().max())
    echo(f"{'config':>{width}} {'trial':>5} {'seeds':>5} {'epochs':>6} {'val R@1':>8} "
         + " ".join(f"{'test R@' + str(k):>14}" for k in ks))
    for label, group in final.groupby(labels, sort=False):
        cells = [pm_text(100 * group[f"test_recall@{k}"].to_numpy()) for k in ks]
        echo(f"{label:>{width}} {group['trial_number'].iloc[0]:>5} {len(group):>5} {group['epochs'].iloc[0]:>6} "
             f"{100 * group[f'best_{SELECTION_METRIC}'].iloc[0]:8.2f} " + " ".join(f"{c:>14}" for c in cells))
        echo(f"{'':>{width}} " + ", ".join(param_text(k, v) for k, v in row_params(group.iloc[0]).items()))
    if final["seed"].nunique() > 1:
        echo("(test: mean ± sample std over seeds; val R@1: the search trial's best epoch on validation classes)")


def recorded_text(entries: list[dict[str, Any]]) -> str:
    """The recorded result as the final table prints it, for messages."""
    lines: list[str] = []
    frame = ledger_frame(entries)
    print_final(frame, recall_ks(frame), lines.append)
    return "\n".join(lines)


def print_recorded(ledger_path: Path, entries: list[dict[str, Any]], echo: Any) -> None:
    """What `--resume` of a finished run shows: the ledger's result, not a new evaluation."""
    tested = entries[0]["time"]
    echo(f"{ledger_path.parent} was tested on {tested} ({len(entries)} ledger entries); not testing again. "
         "Recorded result (Recall in %):")
    echo(recorded_text(entries))
    echo(f"ledger: {ledger_path}")
