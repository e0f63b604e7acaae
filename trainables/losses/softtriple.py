"""SoftTriple (Qian et al., ICCV 2019), written here with a regulariser that fits SOP.

With K centres w_c^k per class (unit length) and x unit length:

    S_{x,c}  = Σ_k softmax_k(x·w_c^k / γ) · x·w_c^k                 relaxed class similarity
    ℓ(x)     = −log softmax_y(λ (S_{x,c} − δ·[c = y]))               margin δ on the true class
    R        = Σ_c Σ_{s<t} sqrt(2 − 2 w_c^s·w_c^t) / (C·K·(K−1))     centres of a class merge
    loss     = mean_x ℓ(x) + τ·R

Symbols are the paper's: λ = `scale`, γ = `gamma` (entropy weight: small γ → the nearest centre
dominates; the softmax temperature is γ itself, PML's `gamma` argument is also this γ and PML
stores 1/γ), δ = `margin`, τ = `tau`, K = `centers_per_class` (10, the paper's).

Why not PML's SoftTripleLoss + SparseCentersRegularizer: the forward equals it (tested), but
PML builds two (C·K)² boolean masks when the regulariser is created and a (C·K)² similarity
matrix on every step. At SOP's 11,318 classes × 10 centres that is 1.28e10 entries per mask
(12.8 GB each) plus 51 GB of float32 similarities. R only ever uses centres of the *same* class,
so we compute the C blocks of K×K similarities: O(C·K²) memory (1.1e6 entries at SOP), the same
value as PML's (tested on small sizes). No size limit is needed.

Centres live in `fc` (D × C·K, class-major: column c·K + k) as in PML, initialised the same way
(Kaiming uniform, a=√5), so checkpoints and tests read the same attribute.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses.base import check_batch


class SoftTriple(nn.Module):
    def __init__(self, num_classes: int, embedding_size: int, *, margin: float, scale: float, gamma: float,
                 tau: float, centers_per_class: int = 10) -> None:
        super().__init__()
        checks = {"num_classes": (num_classes, num_classes >= 2),
                  "centers_per_class": (centers_per_class, centers_per_class >= 1),
                  "scale": (scale, scale > 0), "gamma": (gamma, gamma > 0), "tau": (tau, tau >= 0),
                  "margin": (margin, math.isfinite(margin))}
        for name, (value, ok) in checks.items():
            if not ok:
                raise ValueError(f"SoftTriple {name} is out of range, but got {value!r}.")
        self.num_classes, self.centers_per_class = num_classes, centers_per_class
        self.margin, self.scale, self.gamma, self.tau = float(margin), float(scale), float(gamma), float(tau)
        self.fc = nn.Parameter(torch.empty(embedding_size, num_classes * centers_per_class))
        nn.init.kaiming_uniform_(self.fc, a=math.sqrt(5))

    def class_similarities(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """S_{x,c}: each class's centres weighted by softmax(x·w / γ) — (B, C)."""
        sims = (x @ w).view(x.shape[0], self.num_classes, self.centers_per_class)
        return (F.softmax(sims / self.gamma, dim=2) * sims).sum(dim=2)

    def centre_regulariser(self, w: torch.Tensor) -> torch.Tensor:
        """R from unit-length centres `w` (D × C·K), one K×K block per class."""
        k = self.centers_per_class
        if k == 1:
            return w.new_zeros(())
        blocks = w.t().reshape(self.num_classes, k, -1)                     # (C, K, D)
        gram = blocks @ blocks.transpose(1, 2)                               # (C, K, K)
        s, t = torch.triu_indices(k, k, offset=1, device=w.device)
        same = gram[:, s, t]                                                 # w_c^s·w_c^t for s < t
        # ‖w^s − w^t‖ = sqrt(2 − 2 w^s·w^t); the clamp keeps sqrt's argument ≥ 0 under rounding.
        dist = torch.sqrt(2.0 - torch.clamp(2.0 * same, max=2.0))
        return dist.sum() / (self.num_classes * k * (k - 1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, self.num_classes)
        x = F.normalize(embeddings, dim=1)
        w = F.normalize(self.fc.to(x.dtype), dim=0)
        margin = self.margin * F.one_hot(labels, self.num_classes).to(x.dtype)
        loss = F.cross_entropy(self.scale * (self.class_similarities(x, w) - margin), labels)
        if self.tau > 0:
            loss = loss + self.tau * self.centre_regulariser(w)
        return loss


def softtriple(num_classes: int, embedding_size: int, *, margin: float, scale: float, gamma: float, tau: float,
               centers_per_class: int = 10) -> SoftTriple:
    """SoftTriple with the paper's δ = margin, λ = scale, γ = gamma, τ = tau (paper: 0.01, 20, 0.1, 0.2)."""
    return SoftTriple(num_classes, embedding_size, margin=margin, scale=scale, gamma=gamma, tau=tau,
                      centers_per_class=centers_per_class)
