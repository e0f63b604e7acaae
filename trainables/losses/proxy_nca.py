"""Proxy-NCA as the Proxy-Anchor paper writes it (Kim et al. 2020, Eqs. 1-2), with a scale s.

docs/losses.md#proxy-nca has the equations and what was checked.

    ℓ(X) = mean_{x∈X} [ −s·cos(x, p+) + LSE_{p−∈P−} s·cos(x, p−) ]

One proxy per class; p+ is x's own proxy, P− every other proxy (the positive is *not* in the
denominator). Eq. 2 sums over the batch; we average, so the learning rate does not depend on
the batch size (PML's reducers average too).

Why not PML's ProxyNCALoss: its softmax keeps p+ in the denominator (per sample it is
softplus of the term above) and its default similarity is squared L2 with softmax_scale=1;
no argument turns it into Eq. 2 (docs/losses.md).

The scale s: Eq. 2 as printed has s = 1. With cosines in [−1, 1] the loss then cannot fall
below ≈ log(C−1) − 2, and its softmax over the negative proxies stays close to uniform, so a hard
negative is pushed little harder than an easy one (the pull on the positive is the constant s
whatever s is); every implementation scales the logits. The Proxy-Anchor authors' own Proxy-NCA
baseline (github.com/tjddus9597/Proxy-Anchor-CVPR2020, `losses.py`: `Proxy_NCA(scale=32)`, i.e.
PML with softmax_scale=32 on squared L2 distances of unit vectors) is, on cosines, a scale of 64
(−32·‖x−p‖² = 64·cos − 64): 64 is the default, inside the searched range [1, 100]. s = 1 gives
Eq. 2 exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses.base import ProxyInitMixin, check_batch


class ProxyNCA(ProxyInitMixin, nn.Module):
    def __init__(self, num_classes: int, embedding_size: int, *, scale: float, proxy_init: str = "random") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"Proxy-NCA needs at least 2 classes (negatives), but got num_classes={num_classes}.")
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"Proxy-NCA scale must be positive, but got {scale}.")
        self.num_classes, self.scale = num_classes, float(scale)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")  # as Proxy-Anchor's proxies
        self._setup_proxy_init(proxy_init)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, self.num_classes)
        self._check_proxies_ready()
        x = F.normalize(embeddings, dim=1)
        p = F.normalize(self.proxies.to(x.dtype), dim=1)
        logits = self.scale * (x @ p.t())                                   # s·cos(x, p), (B, C)
        positive = logits.gather(1, labels[:, None]).squeeze(1)             # s·cos(x, p+)
        own = F.one_hot(labels, self.num_classes).bool()
        negatives = torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=1)  # LSE over P−
        return (negatives - positive).mean()


def proxy_nca(num_classes: int, embedding_size: int, *, scale: float, proxy_init: str = "random") -> ProxyNCA:
    """Proxy-NCA, Eq. 2 of the Proxy-Anchor paper, logits scaled by `scale` (the space's default: 64)."""
    return ProxyNCA(num_classes, embedding_size, scale=scale, proxy_init=proxy_init)
