"""select.ranked: the one order selection and the report share."""
from __future__ import annotations

import pandas as pd
import pytest

from results import select
from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED

BEST = f"best_{SELECTION_METRIC}"


def _frame(rows: list[tuple[str, bool, float | None, str | None]]) -> pd.DataFrame:
    """Trials as (state, full_budget, best validation R@1, diverged reason), numbered in order."""
    return pd.DataFrame([{"number": n, "state": state, "full_budget": full, BEST: best, DIVERGED: reason}
                         for n, (state, full, best, reason) in enumerate(rows)])


def test_ranked_puts_full_budget_first_and_leaves_out_what_cannot_be_selected() -> None:
    trials = _frame([("pruned", False, 0.9, None), ("complete", True, 0.5, None), ("complete", True, 0.7, None),
                     ("pruned", False, 0.95, "loss became nan in epoch 3"), ("failed", False, 0.99, None),
                     ("running", False, 0.98, None), ("pruned", False, 0.8, None), ("complete", True, 0.7, None)])
    assert list(select.ranked(trials)["number"]) == [2, 7, 1, 0, 6]  # ties: the earlier trial first
    assert list(select.select_top(trials, 3)["number"]) == [2, 7, 1]


def test_select_top_refuses_a_study_with_nothing_selectable() -> None:
    trials = _frame([("failed", False, None, None), ("pruned", False, 0.0, "loss became inf in epoch 1")])
    with pytest.raises(RuntimeError, match="every trial failed, diverged or is unfinished"):
        select.select_top(trials, 1)
