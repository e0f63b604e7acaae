"""Losses by name: each factory turns a search space's loss hyperparameters into a module.

Every loss is called as `loss(embeddings, labels)` with labels in [0, num_classes); losses that
mine pairs carry their miner inside. A loss's own parameters (proxies, centres) are the
module's `parameters()`: the trainer gives them their own optimiser group and learning rate.
Hyperparameter names are the papers' (see spaces/): `margin`, `alpha`, `beta`, `scale`, `gamma`,
`tau`, `epsilon`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pytorch_metric_learning import losses, miners, regularizers
from torch import nn


class MinedLoss(nn.Module):
    """A pair loss preceded by its miner, so callers see one `loss(embeddings, labels)`."""

    def __init__(self, loss: nn.Module, miner: nn.Module) -> None:
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


def proxy_anchor(num_classes: int, embedding_size: int, *, margin: float, alpha: float) -> nn.Module:
    """Proxy-Anchor (Kim et al. 2020, Eq. 4): PML's ProxyAnchorLoss equals it (DESIGN §5)."""
    return losses.ProxyAnchorLoss(num_classes, embedding_size, margin=margin, alpha=alpha)


def softtriple(num_classes: int, embedding_size: int, *, margin: float, scale: float, gamma: float,
               tau: float, centers_per_class: int = 10) -> nn.Module:
    """SoftTriple (Qian et al. 2019) with the paper's symbols: δ=margin, λ=scale, γ=gamma, τ=tau.

    PML's `gamma` argument is the paper's γ (it stores 1/γ internally). τ weighs the centre
    regulariser, which PML only applies when given a SparseCentersRegularizer.
    """
    reg = {}
    if tau > 0:
        reg = {"weight_regularizer": regularizers.SparseCentersRegularizer(num_classes, centers_per_class),
               "weight_reg_weight": tau}
    return losses.SoftTripleLoss(num_classes, embedding_size, centers_per_class=centers_per_class,
                                 la=scale, gamma=gamma, margin=margin, **reg)


def multi_similarity(num_classes: int, embedding_size: int, *, margin: float, alpha: float, beta: float,
                     epsilon: float) -> nn.Module:
    """Multi-Similarity (Wang et al. 2019): λ=margin (PML `base`), with its ε pair miner."""
    return MinedLoss(losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=margin),
                     miners.MultiSimilarityMiner(epsilon=epsilon))


LossFactory = Callable[..., nn.Module]

LOSSES: dict[str, LossFactory] = {
    "proxy_anchor": proxy_anchor,
    "softtriple": softtriple,
    "ms": multi_similarity,
}


def build_loss(name: str, num_classes: int, embedding_size: int, params: Mapping[str, float]) -> nn.Module:
    """The named loss with these hyperparameters; unknown names or keys are errors, not ignored."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    try:
        return LOSSES[name](num_classes, embedding_size, **params)
    except TypeError as err:
        raise ValueError(f"Loss {name!r} got hyperparameters {sorted(params)} that do not fit it: {err}") from err
