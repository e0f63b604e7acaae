"""Losses by name: each factory turns a search space's loss hyperparameters into a module.

Every loss is called as `loss(embeddings, labels)` with labels in [0, num_classes); losses that
mine pairs carry their miner inside. A loss's own parameters (proxies, centres) are the
module's `parameters()`: the trainer gives them their own optimiser group and learning rate.
Hyperparameter names are the papers' (see spaces/ and each module's docstring):

| name           | module              | hyperparameters                    | parameters        | source     |
| -------------- | ------------------- | ---------------------------------- | ----------------- | ---------- |
| `proxy_anchor` | proxy_anchor.py     | margin, alpha (+ proxy_init)       | proxies (C×D)     | PML        |
| `proxy_nca`    | proxy_nca.py        | scale (+ proxy_init)               | proxies (C×D)     | ours, Eq. 2|
| `softtriple`   | softtriple.py       | margin, scale, gamma, tau          | fc (D×C·K)        | ours       |
| `ms`           | multi_similarity.py | margin, alpha, beta, epsilon       | —                 | ours       |
| `contrastive`  | pairs.py            | margin                             | —                 | PML        |
| `triplet`      | pairs.py            | margin (+ mining, fixed semihard)  | —                 | PML        |
| `pd`           | pd.py               | proxy_init                         | proxies (C×D)     | ours       |

Losses with `init_proxies_from` (proxy_anchor, proxy_nca, pd) accept proxy_init="class_mean";
their `needs_proxy_init` is then True until the trainer calls
`loss.init_proxies_from(embeddings, targets)` with the embedded training set.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from torch import nn

from trainables.losses.base import PROXY_INITS, MinedLoss, ProxyInitMixin

__all__ = ["LOSSES", "PROXY_INITS", "LossFactory", "MinedLoss", "ProxyInitMixin", "build_loss", "loss_factory"]

LossFactory = Callable[..., nn.Module]

# name -> "module.factory" in this package. A loss's module is imported when the loss is first
# built: importing PML (for proxy_anchor, contrastive, triplet) imports scipy.stats, about 1 s of
# CPU that every trial worker and the driver would otherwise pay for the other losses too.
LOSSES: dict[str, str] = {
    "proxy_anchor": "proxy_anchor.proxy_anchor",
    "proxy_nca": "proxy_nca.proxy_nca",
    "softtriple": "softtriple.softtriple",
    "ms": "multi_similarity.multi_similarity",
    "contrastive": "pairs.contrastive",
    "triplet": "pairs.triplet",
    "pd": "pd.pd",
}


def loss_factory(name: str) -> LossFactory:
    """The factory of the named loss, its module imported now."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    module, factory = LOSSES[name].rsplit(".", 1)
    return getattr(importlib.import_module(f"{__name__}.{module}"), factory)


def build_loss(name: str, num_classes: int, embedding_size: int, params: Mapping[str, float | str]) -> nn.Module:
    """The named loss with these hyperparameters; unknown names or keys are errors, not ignored."""
    factory = loss_factory(name)
    try:
        return factory(num_classes, embedding_size, **params)
    except TypeError as err:
        raise ValueError(f"Loss {name!r} got hyperparameters {sorted(params)} that do not fit it: {err}") from err
