"""Proxy-Anchor (Kim et al. 2020) search space, docs/spaces.md.

| symbol | name here | paper default | thesis range |
| δ      | margin    | 0.1           | [0, 1]       |
| α      | alpha     | 32            | (0, 100]     |

The proxy learning rate (paper: 100x the backbone's) is the shared `proxy_lr` (spaces/optimiser.py).
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, float] = {"margin": 0.1, "alpha": 32.0}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("margin", 0.0, 1.0)
    trial.suggest_float("alpha", 1.0, 100.0)
