"""Triplet (Schroff et al. 2015) with semi-hard mining, cosine form, search space.

| symbol | name here | default | range           | source                                                 |
| m      | margin    | 0.1     | [0.01, 1], log  | default: thesis table (Psomas 2020), = FaceNet's α = 0.2 on |
|        |           |         |                 | squared distances; range: PML's default 0.05 to the      |
|        |           |         |                 | thesis's margin bound 1, log (margins span decades)      |

The miner type is fixed to "semihard" (FaceNet; thesis "Triplet: semi-hard"), not searched:
reasons in trainables/losses/pairs.py. A margin of 0 is excluded: semi-hard mining would keep
no triplet.
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, float] = {"margin": 0.1}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("margin", 0.01, 1.0, log=True)
