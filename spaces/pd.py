"""PD-Loss (Silva et al. 2025; docs/losses.md#pd-loss) search space.

| symbol | name here  | default  | range                    | source                                         |
|        | proxy_init | "random" | "random" / "class_mean"  | default: the paper's reported runs ("Random     |
|        |            |          |                          | Init"); class means: the official README        |

No temperature: d′ does not change when the similarities are divided by a constant, so a τ
would be searched for nothing (trainables/losses/pd.py). The proxy learning rate is the shared
`proxy_lr` (spaces/optimiser.py). "class_mean" needs the trainer to call
`loss.init_proxies_from(embeddings, targets)` before the first step.
"""
from __future__ import annotations

import optuna

DEFAULTS: dict[str, str] = {"proxy_init": "random"}


def suggest(trial: optuna.Trial) -> None:
    trial.suggest_categorical("proxy_init", ["random", "class_mean"])
