"""PD-Loss, Proxy-Decidability (Silva et al. 2025; docs/losses.md#pd-loss), written here (not in PML).

One learnable proxy per class; s(x, p) is the cosine similarity of L2-normalised vectors.

    genuine   G = { s(x, p_{y(x)})      : x ∈ batch }              B values
    impostor  I = { s(x, p_c), c ≠ y(x) : x ∈ batch }              B·(C−1) values
    loss = −log(max(μ_G − μ_I, ε)) + ½·log(max(σ²_G + σ²_I, ε))

which is −log d′ + const for the decidability index d′ = (μ_G − μ_I) / sqrt((σ²_G + σ²_I)/2).
μ and σ² are the mean and the population variance (divide by n) of each pooled set, so a batch
of one sample per class, or a single sample, is well defined (σ²_G = 0 for one sample).
ε = 1e-6 is the clamp the official README mentions: while μ_G − μ_I ≤ ε (possible right after
a random start) the first term is constant, and the variance term alone acts until some batch
separates the means; `proxy_init="class_mean"` starts with μ_G > μ_I.

No temperature. The paper calls its objective "temperature-scaled", but dividing every
similarity by τ divides μ_G − μ_I by τ and σ_G, σ_I by τ, so d′ and the loss above are unchanged:

    −log((μ_G − μ_I)/τ) + ½·log((σ²_G + σ²_I)/τ²) = −log(μ_G − μ_I) + ½·log(σ²_G + σ²_I)

Inside the clamps a τ would only rescale ε (to ε·τ and ε·τ²). A temperature matters only where
it enters non-linearly — e.g. softmax-weighting the impostors towards the hard ones — which is a
different loss from the one the paper and its README define, so we do not invent one; a search
over τ here would search a no-op. The searched knobs are the proxy start (`proxy_init`) and the
shared proxy learning rate.

Proxies start as Proxy-Anchor's (Kaiming normal) for "random", or from the class means of the
embedded training set for "class_mean" (see `ProxyInitMixin.init_proxies_from`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses.base import ProxyInitMixin, check_batch

EPSILON = 1e-6  # clamp of the mean gap and of the summed variances before the logs


class PDLoss(ProxyInitMixin, nn.Module):
    def __init__(self, num_classes: int, embedding_size: int, *, proxy_init: str = "random",
                 epsilon: float = EPSILON) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"PD-Loss needs at least 2 classes (impostors), but got num_classes={num_classes}.")
        if not epsilon > 0:
            raise ValueError(f"PD-Loss epsilon must be positive, but got {epsilon}.")
        self.num_classes, self.epsilon = num_classes, float(epsilon)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        self._setup_proxy_init(proxy_init)

    def statistics(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """μ and σ² of the genuine and impostor similarities of this batch."""
        x = F.normalize(embeddings, dim=1)
        sims = x @ F.normalize(self.proxies.to(x.dtype), dim=1).t()          # (B, C)
        own = F.one_hot(labels, self.num_classes).bool()
        genuine, impostor = sims[own], sims[~own]
        return {"mu_gen": genuine.mean(), "var_gen": genuine.var(correction=0),
                "mu_imp": impostor.mean(), "var_imp": impostor.var(correction=0)}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, self.num_classes)
        if len(labels) == 0:
            raise ValueError("PD-Loss got an empty batch.")
        self._check_proxies_ready()
        s = self.statistics(embeddings, labels)
        gap = torch.clamp(s["mu_gen"] - s["mu_imp"], min=self.epsilon)
        spread = torch.clamp(s["var_gen"] + s["var_imp"], min=self.epsilon)
        return -torch.log(gap) + 0.5 * torch.log(spread)


def pd(num_classes: int, embedding_size: int, *, proxy_init: str = "random", epsilon: float = EPSILON) -> PDLoss:
    """PD-Loss; `proxy_init` is "random" (the paper's reported runs) or "class_mean" (its README)."""
    return PDLoss(num_classes, embedding_size, proxy_init=proxy_init, epsilon=epsilon)
