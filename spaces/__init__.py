"""Search spaces by loss name: Optuna define-by-run functions plus the papers' default config.

A space proposes the loss's hyperparameters (spaces/<loss>.py, next to the table in
docs/spaces.md) and the shared optimiser knobs (spaces/optimiser.py). `default_config` is the
paper's recipe; the search evaluates it first so every study has the paper's point to beat.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optuna

from spaces import contrastive, ms, optimiser, pd, proxy_anchor, proxy_nca, softtriple, triplet
from spaces.optimiser import OptimiserDefaults

LossSpace = Callable[[optuna.Trial], None]

# name -> (module with `suggest(trial)` and `DEFAULTS`, whether the loss has proxies/centres)
SPACES: dict[str, tuple[Any, bool]] = {
    "proxy_anchor": (proxy_anchor, True),
    "proxy_nca": (proxy_nca, True),
    "softtriple": (softtriple, True),
    "ms": (ms, False),
    "contrastive": (contrastive, False),
    "triplet": (triplet, False),
    "pd": (pd, True),
}


def _entry(loss: str) -> tuple[Any, bool]:
    if loss not in SPACES:
        raise ValueError(f"No search space for loss {loss!r}; choose one of {sorted(SPACES)}.")
    return SPACES[loss]


def _space(trial: optuna.Trial, loss: str, defaults: OptimiserDefaults) -> dict[str, Any]:
    module, has_proxies = _entry(loss)
    optimiser.suggest(trial, defaults, has_proxies=has_proxies)
    module.suggest(trial)
    return {}


def define_by_run(loss: str, defaults: OptimiserDefaults) -> Callable[[optuna.Trial], dict[str, Any]]:
    """The whole space of one loss: optimiser knobs, then the loss's hyperparameters.

    A partial of a module-level function, not a closure: Ray pickles the searcher with it.
    """
    _entry(loss)
    return functools.partial(_space, loss=loss, defaults=defaults)


def default_config(loss: str, defaults: OptimiserDefaults) -> dict[str, float | str]:
    """The paper's hyperparameters with this dataset's optimiser recipe."""
    module, has_proxies = _entry(loss)
    return {**optimiser.default_config(defaults, has_proxies=has_proxies), **module.DEFAULTS}
