"""What the losses share: input checks, the miner wrapper, and proxies initialised from class means.

Every loss is called as `loss(embeddings, labels)` with `embeddings` of shape (B, D) and integer
`labels` in [0, num_classes). Similarities are cosines: embeddings and proxies are L2-normalised
inside each loss, whatever the backbone already did.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROXY_INITS = ("random", "class_mean")


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
    """Eager shape/range checks, so a bad batch fails with its numbers instead of deep in an index."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (batch, dim), but got shape {tuple(embeddings.shape)}.")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be ({embeddings.shape[0]},) to match the embeddings, "
                         f"but got shape {tuple(labels.shape)}.")
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), but got [{int(labels.min())}, "
                         f"{int(labels.max())}]; map class ids to 0..C-1 first (the trainer does).")


class MinedLoss(nn.Module):
    """A pair loss preceded by its miner, so callers see one `loss(embeddings, labels)`."""

    def __init__(self, loss: nn.Module, miner: nn.Module) -> None:
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


class ProxyInitMixin:
    """`init_proxies_from` for a loss with one proxy per class in `self.proxies` (C x D).

    With `proxy_init="class_mean"` the proxies must be set from the training set's class means
    before the first step: the trainer embeds the training set once and calls
    `init_proxies_from(embeddings, targets)`; `needs_proxy_init` says whether that is still due.
    The flag is a buffer, so a loss restored from a checkpoint is not initialised twice, and a
    forward pass before the initialisation is an error, not a silent random start.
    """

    proxies: nn.Parameter
    proxy_init: str

    def _setup_proxy_init(self, proxy_init: str) -> None:
        if proxy_init not in PROXY_INITS:
            raise ValueError(f"proxy_init must be one of {PROXY_INITS}, but got {proxy_init!r}.")
        self.proxy_init = proxy_init
        self.register_buffer("proxies_initialised", torch.tensor(proxy_init == "random"))

    @property
    def needs_proxy_init(self) -> bool:
        """True until `init_proxies_from` ran for a loss built with proxy_init="class_mean"."""
        return not bool(self.proxies_initialised)

    def _check_proxies_ready(self) -> None:
        if self.needs_proxy_init:
            raise RuntimeError(
                f"{type(self).__name__} was built with proxy_init='class_mean' but its proxies were never "
                "initialised: call loss.init_proxies_from(embeddings, targets) with the embedded training set "
                "before the first training step.")

    @torch.no_grad()
    def init_proxies_from(self, embeddings: torch.Tensor, targets: torch.Tensor) -> None:
        """Point each proxy at the normalised mean of its class's (normalised) embeddings.

        Only the direction changes: each proxy keeps its length, so the proxy learning rate acts the
        same after a class-mean start as after a random one (the cosine losses ignore the length).
        Classes absent from `targets` (or whose mean is the zero vector) keep their random proxy.
        """
        num_classes, dim = self.proxies.shape
        if embeddings.dim() != 2 or embeddings.shape[1] != dim:
            raise ValueError(f"embeddings must be (N, {dim}), but got shape {tuple(embeddings.shape)}.")
        targets = torch.as_tensor(targets, device=self.proxies.device).long()
        check_batch(embeddings, targets, num_classes)
        x = F.normalize(embeddings.to(self.proxies.device, torch.float64), dim=1)
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device).index_add_(0, targets, x)
        present = sums.norm(dim=1) > 1e-12
        directions = F.normalize(sums[present], dim=1)
        lengths = self.proxies[present].norm(dim=1, keepdim=True).double()
        self.proxies[present] = (directions * lengths).to(self.proxies.dtype)
        self.proxies_initialised.fill_(True)
