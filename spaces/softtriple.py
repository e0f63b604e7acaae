"""SoftTriple (Qian et al. 2019) search space, docs/spaces.md.

| symbol | name here | paper default | thesis range |
| δ      | margin    | 0.01          | [0, 1]       |
| λ      | scale     | 20            | (0, 100]     |
| γ      | gamma     | 0.1           | thesis searches 1/γ in (0, 100], optimum 58 |
| τ      | tau       | 0.2           | [0, 1]       |

γ here is always the paper's γ (the entropy weight of the soft assignment to centres). The
thesis's "γ = 10 (0.1 as 1/γ)" is its inverse, so its range 1/γ ∈ [10, 100] is γ ∈ [0.01, 0.1],
searched on a log scale. The centre learning rate is the shared `proxy_lr` (spaces/optimiser.py).
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, float] = {"margin": 0.01, "scale": 20.0, "gamma": 0.1, "tau": 0.2}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("margin", 0.0, 1.0)
    trial.suggest_float("scale", 1.0, 100.0)
    trial.suggest_float("gamma", 0.01, 0.1, log=True)
    trial.suggest_float("tau", 0.0, 1.0)
