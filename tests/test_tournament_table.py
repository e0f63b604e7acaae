"""The tournament table: per-loss pick by validation, test mean ± std with a t-interval, ranks, gain over
the paper defaults, Kendall tau, on hand-made trials and test rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from results.tournament import print_standings, standings, t_interval
from spaces import OptimiserDefaults, default_config
from trainables.config import SELECTION_METRIC
from trainables.study import DIVERGED

LR = 1e-3
BEST = f"best_{SELECTION_METRIC}"


def _trial(loss: str, number: int, best: float, params: dict, full: bool = True, state: str = "complete") -> dict:
    return {"loss": loss, "number": number, "state": state, DIVERGED: None, "full_budget": full,
            BEST: best, "best_epoch": 3, **{f"param_{k}": v for k, v in params.items()}}


def _searched(loss: str) -> dict:
    return {k: (v * 1.5 if isinstance(v, float) else v) for k, v in default_config(loss, OptimiserDefaults(LR)).items()}


def _trials() -> pd.DataFrame:
    d = {loss: default_config(loss, OptimiserDefaults(LR)) for loss in ("ms", "triplet", "softtriple")}
    return pd.DataFrame([
        _trial("ms", 0, 0.80, d["ms"]), _trial("ms", 1, 0.85, _searched("ms")),
        _trial("ms", 2, 0.99, _searched("ms"), full=False, state="pruned"),  # pruned: ranks below full-budget
        _trial("triplet", 0, 0.70, d["triplet"], full=False, state="pruned"), _trial("triplet", 1, 0.90,
                                                                                    _searched("triplet")),
        _trial("softtriple", 0, 0.60, d["softtriple"]), _trial("softtriple", 1, 0.50, _searched("softtriple")),
    ])


def _tested(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"loss": loss, "config_rank": 1, "seed": s, "test_recall@1": v, "test_recall@2": v + 0.05,
                          "test_map@r": v / 2, "test_nmi": 0.5}
                         for loss, vs in values.items() for s, v in enumerate(vs)]
                        + [{"loss": "ms", "config_rank": 2, "seed": 0, "test_recall@1": 0.0, "test_recall@2": 0.0,
                            "test_map@r": 0.0, "test_nmi": 0.0}])  # a config #2 is not the loss's entry


def test_each_loss_is_its_config_1_ranked_by_validation_with_its_gain_over_the_paper_defaults() -> None:
    result = standings(_trials(), None, LR)
    table = result.table.set_index("loss")
    assert list(result.table["loss"]) == ["triplet", "ms", "softtriple"] and result.winner == "triplet"
    assert table.loc["ms", "trial"] == 1 and table.loc["ms", "val"] == 0.85  # the full-budget one, not the 0.99
    assert table.loc["ms", "gain"] == pytest.approx(0.05) and table.loc["ms", "defaults_full_budget"]
    assert table.loc["triplet", "gain"] == pytest.approx(0.20) and not table.loc["triplet", "defaults_full_budget"]
    assert table.loc["softtriple", "trial"] == 0 and table.loc["softtriple", "gain"] == 0  # the defaults won
    assert result.tau is None and result.metrics == []


def test_test_columns_are_mean_std_and_a_t_interval_over_seeds_and_tau_compares_the_ranks() -> None:
    result = standings(_trials(), _tested({"ms": [0.6, 0.7, 0.8], "triplet": [0.5, 0.5, 0.6],
                                           "softtriple": [0.9, 0.9, 0.9]}), LR)
    table = result.table.set_index("loss")
    assert result.metrics == ["recall@1", "recall@2", "map@r"] and result.seeds == 3
    assert table.loc["ms", "recall@1_mean"] == pytest.approx(0.7)
    assert table.loc["ms", "recall@1_std"] == pytest.approx(0.1)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # 0.248: three seeds make a wide interval
    assert table.loc["ms", "recall@1_ci"] == pytest.approx((0.7 - half, 0.7 + half))
    assert dict(table["test_rank"]) == {"softtriple": 1, "ms": 2, "triplet": 3}
    assert dict(table["val_rank"]) == {"triplet": 1, "ms": 2, "softtriple": 3}
    assert result.winner == "triplet"  # by validation, although its test score is the lowest
    assert result.tau == pytest.approx(-1.0)  # validation order is the reverse of test order here


def test_one_seed_has_no_interval_and_the_table_says_why(capsys) -> None:
    assert t_interval(np.array([0.5])) is None
    result = standings(_trials(), _tested({"ms": [0.6], "triplet": [0.5], "softtriple": [0.9]}), LR)
    lines: list[str] = []
    print_standings(result, lines.append)
    text = "\n".join(lines)
    assert "±" not in text and "one seed" in text and "validation picks triplet" in text
    assert "Kendall τ" in text and "n = 3 losses" in text
    assert "*" in lines[1]  # triplet's defaults were pruned: its gain is marked
