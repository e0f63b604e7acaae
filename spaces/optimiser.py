"""The optimiser knobs every loss shares: backbone lr, weight decay, and the proxy/centre lr.

Ranges are relative to the dataset's recipe (docs/datasets.md: AdamW 1e-4 for pretrained ResNets on
CUB/Cars, higher for the from-scratch glyph CNN), so one space serves every dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import optuna


@dataclass(frozen=True)
class OptimiserDefaults:
    """A dataset's optimiser recipe: the centre of the lr range and the paper's proxy lr ratio."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    proxy_lr_ratio: float = 100.0  # Proxy-Anchor's official recipe: proxies learn 100x faster

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.weight_decay >= 0 and self.proxy_lr_ratio > 0):
            raise ValueError(f"Optimiser defaults must be positive, but got {self}.")


def suggest(trial: optuna.Trial, d: OptimiserDefaults, *, has_proxies: bool) -> None:
    """lr within 10x either side of the recipe (log); weight decay 1e-6..1e-2; proxy lr 1x..1000x lr."""
    trial.suggest_float("lr", d.lr / 10, d.lr * 10, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    if has_proxies:
        # Searched as an absolute lr (not a ratio) so results read as the papers state them.
        trial.suggest_float("proxy_lr", d.lr / 10, d.lr * 1000, log=True)


def default_config(d: OptimiserDefaults, *, has_proxies: bool) -> dict[str, float]:
    """The recipe itself, as a point of the space above."""
    config = {"lr": d.lr, "weight_decay": d.weight_decay}
    if has_proxies:
        config["proxy_lr"] = d.lr * d.proxy_lr_ratio
    return config
