"""Proxy-NCA (Movshovitz-Attias et al. 2017, as Eq. 2 of the Proxy-Anchor paper) search space.

| symbol | name here | default | range          | source                                                    |
| s      | scale     | 64      | [1, 100]       | Eq. 2 has s = 1; 64 is the Proxy-Anchor authors' baseline  |
|        |           |         |                | (`Proxy_NCA(scale=32)` on squared L2 = 64 on cosines, see  |
|        |           |         |                | trainables/losses/proxy_nca.py); range as thesis's scales  |

Why a scale at all: trainables/losses/proxy_nca.py. The proxy learning rate is the shared
`proxy_lr` (spaces/optimiser.py). The thesis's Proxy-NCA proxy lr (1e-5, a tenth of its
backbone lr of 1e-4) is the low end of that range; the default is Proxy-Anchor's ×100.
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, float] = {"scale": 64.0}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_float("scale", 1.0, 100.0)
