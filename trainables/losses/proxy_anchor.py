"""Proxy-Anchor (Kim et al., CVPR 2020, Eq. 4): PML's ProxyAnchorLoss is that equation (docs/losses.md).

    ℓ(X) = 1/|P+| Σ_{p∈P+} log(1 + Σ_{x∈X+_p} exp(−α(s(x,p) − δ)))
         + 1/|P|  Σ_{p∈P}  log(1 + Σ_{x∈X−_p} exp( α(s(x,p) + δ)))

s is the cosine similarity, P all proxies, P+ the proxies with a positive in the batch.
PML 2.9 computes exactly this (α = `alpha`, δ = `margin`, the positive sum divided by |P+|, the
negative one by |P| = num_classes; docs/losses.md), checked in tests/test_losses.py against a
float64 reference written from Eq. 4. We subclass it only to add the class-mean proxy start.
Proxies start as PML's (Kaiming normal, as the official code), i.e. the paper's random init.
"""
from __future__ import annotations

import torch
from pytorch_metric_learning import losses

from trainables.losses.base import ProxyInitMixin, check_batch


class ProxyAnchor(ProxyInitMixin, losses.ProxyAnchorLoss):
    def __init__(self, num_classes: int, embedding_size: int, *, margin: float, alpha: float,
                 proxy_init: str = "random") -> None:
        if not alpha > 0:
            raise ValueError(f"Proxy-Anchor alpha (α, a scale) must be positive, but got {alpha}.")
        super().__init__(num_classes, embedding_size, margin=margin, alpha=alpha)
        self._setup_proxy_init(proxy_init)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_batch(embeddings, labels, self.num_classes)
        self._check_proxies_ready()
        return super().forward(embeddings, labels)


def proxy_anchor(num_classes: int, embedding_size: int, *, margin: float, alpha: float,
                 proxy_init: str = "random") -> ProxyAnchor:
    """Proxy-Anchor with δ = margin, α = alpha (paper: 0.1, 32)."""
    return ProxyAnchor(num_classes, embedding_size, margin=margin, alpha=alpha, proxy_init=proxy_init)
