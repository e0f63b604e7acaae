"""Contrastive (Hadsell et al. 2006, cosine form of the thesis table) search space.

| symbol | name here | default | range  | source                                                     |
| λ      | margin    | 0.5     | [0, 1] | default: thesis table (Psomas 2020) and the MS paper's setting; |
|        |           |         |        | range: the thesis's range for every similarity margin        |

λ is the similarity above which a negative pair is pushed (trainables/losses/pairs.py).
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, float] = {"margin": 0.5}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("margin", 0.0, 1.0)
