"""Multi-Similarity (Wang et al. 2019) search space, docs/spaces.md.

The defaults are the papers' (docs/spaces.md); λ = 0.5 is also the authors' code (research-ms-loss, `thresh = 0.5`)
and PML's default, while PML's documentation says the paper's text uses λ = 1 (the paper is not
among the documents we checked, so this is not checked here). 1 is inside the searched range.

| symbol | name here | default       | thesis range |
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
