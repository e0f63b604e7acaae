"""Selection: which searched trials are retrained and tested, in one order the report shows as well."""
from __future__ import annotations

import pandas as pd

from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED, LOSS_KEY


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials selection may choose, in its order: by validation Recall@1, full-budget trials first.

    A pruned trial never showed how it does at the full schedule, so it ranks below every trial that
    reached it. Failed and unfinished trials, and trials whose loss diverged within the search budget
    (their retrain would too), are left out. The report shows this rank, so it is the selection's.
    """
    best = f"best_{SELECTION_METRIC}"
    usable = trials[trials["state"].isin(["complete", "pruned"]) & trials[best].notna() & trials[DIVERGED].isna()]
    return usable.sort_values(["full_budget", best, "number"], ascending=[False, False, True])


def select_top(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k best trials in `ranked` order (a pruned trial only when fewer than k ran the full budget)."""
    order = ranked(trials)
    if order.empty:
        raise RuntimeError("No trial can be selected: every trial failed, diverged or is unfinished. "
                           "See the trial logs under the run directory's ray/ folder.")
    return order.head(k)


def select_per_loss(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """select_top within each loss of trials.parquet, losses in their order: a tournament retrains each loss's
    own best configs, never a config of one loss in place of another's. A loss with no selectable trial is
    left out (the caller names it); with one loss this is select_top."""
    picked = [ranked(group).head(k) for _, group in trials.groupby(LOSS_KEY, sort=False)]
    if all(p.empty for p in picked):
        return select_top(trials, k)  # raises, saying why
    return pd.concat([p for p in picked if not p.empty])
