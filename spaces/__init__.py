"""Search spaces by loss name: Optuna define-by-run functions plus the papers' default config.

A space proposes the loss's hyperparameters (spaces/<loss>.py, next to the table in
DESIGN §4) and the shared optimiser knobs (spaces/optimiser.py). `default_config` is the
paper's recipe; the search evaluates it first so every study has the paper's point to beat.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from spaces import ms, optimiser, proxy_anchor, softtriple
from spaces.optimiser import OptimiserDefaults

LossSpace = Callable[[optuna.Trial], None]

# name -> (module with `suggest(trial)` and `DEFAULTS`, whether the loss has proxies/centres)
SPACES: dict[str, tuple[Any, bool]] = {
    "proxy_anchor": (proxy_anchor, True),
    "softtriple": (softtriple, True),
    "ms": (ms, False),
}


def _entry(loss: str) -> tuple[Any, bool]:
    if loss not in SPACES:
        raise ValueError(f"No search space for loss {loss!r}; choose one of {sorted(SPACES)}.")
    return SPACES[loss]


def define_by_run(loss: str, defaults: OptimiserDefaults) -> Callable[[optuna.Trial], dict[str, Any]]:
    """The whole space of one loss: optimiser knobs, then the loss's hyperparameters."""
    module, has_proxies = _entry(loss)

    def space(trial: optuna.Trial) -> dict[str, Any]:
        optimiser.suggest(trial, defaults, has_proxies=has_proxies)
        module.suggest(trial)
        return {}

    return space


def default_config(loss: str, defaults: OptimiserDefaults) -> dict[str, float]:
    """The paper's hyperparameters with this dataset's optimiser recipe."""
    module, has_proxies = _entry(loss)
    return {**optimiser.default_config(defaults, has_proxies=has_proxies), **module.DEFAULTS}
