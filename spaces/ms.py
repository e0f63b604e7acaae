"""Multi-Similarity (Wang et al. 2019) search space, DESIGN §4 table.

| symbol | name here | paper default | thesis range |
| λ      | margin    | 0.5           | [0, 1]       |
| α      | alpha     | 2             | (0, 100]     |
| β      | beta      | 50            | (0, 100]     |
| ε      | epsilon   | 0.1 (miner)   | [0, 1]       |
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, float] = {"margin": 0.5, "alpha": 2.0, "beta": 50.0, "epsilon": 0.1}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("margin", 0.0, 1.0)
    trial.suggest_float("alpha", 1.0, 100.0)
    trial.suggest_float("beta", 1.0, 100.0)
    trial.suggest_float("epsilon", 0.0, 1.0)
