"""Multi-Similarity (Wang et al., CVPR 2019) with its pair miner, written from the paper.

With S_ij the cosine similarity, for each anchor i the paper's miner keeps

    negatives k (y_k ≠ y_i) with  S_ik + ε > min_{j: y_j = y_i, j ≠ i} S_ij
    positives j (y_j = y_i) with  S_ij − ε < max_{k: y_k ≠ y_i} S_ik

and the paper's loss over the kept pairs P_i, N_i is

    ℓ = 1/m Σ_i [ 1/α·log(1 + Σ_{j∈P_i} exp(−α(S_ij − λ)))
                + 1/β·log(1 + Σ_{k∈N_i} exp( β(S_ik − λ))) ]

An anchor without positives (a single-sample class in the batch) keeps no negatives and adds 0
to the sum, but still counts in m; so does an anchor whose pairs were all mined away.

Why not PML's MultiSimilarityLoss + MultiSimilarityMiner: they compute the same value (tested)
except that PML returns 0 whenever the miner keeps at most one positive and one negative
(directed) pair in the whole batch (GenericPairLoss's `len(x) <= 1` shortcut), where the
paper's loss is not 0. Our M-per-class batches rarely hit that, but it happens exactly when few
pairs survive mining — small batches or late training — and silently drops that step's
gradient; writing the 20 lines removes the case instead of arguing it away.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses.base import check_batch


def _log1p_sum_exp(z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log(1 + Σ_{keep} exp(z)) per row, stable: LSE over the kept entries and a 0 for the 1."""
    z = torch.cat([z.masked_fill(~keep, float("-inf")), z.new_zeros(z.shape[0], 1)], dim=1)
    return torch.logsumexp(z, dim=1)


class MultiSimilarity(nn.Module):
    def __init__(self, *, margin: float, alpha: float, beta: float, epsilon: float) -> None:
        super().__init__()
        for name, value in {"alpha": alpha, "beta": beta}.items():
            if not value > 0:
                raise ValueError(f"Multi-Similarity {name} must be positive, but got {value}.")
        if not epsilon >= 0:
            raise ValueError(f"Multi-Similarity epsilon (miner) must be >= 0, but got {epsilon}.")
        self.margin, self.alpha, self.beta, self.epsilon = float(margin), float(alpha), float(beta), float(epsilon)

    @torch.no_grad()
    def mine(self, sims: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks of the kept positive and negative pairs, (B, B) each (anchor = row)."""
        same = labels[:, None] == labels[None, :]
        pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        neg = ~same
        hardest_neg = sims.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
        hardest_pos = sims.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
        return pos & (sims - self.epsilon < hardest_neg), neg & (sims + self.epsilon > hardest_pos)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels)
        x = F.normalize(embeddings, dim=1)
        sims = x @ x.t()
        keep_pos, keep_neg = self.mine(sims.detach(), labels)
        pos = _log1p_sum_exp(-self.alpha * (sims - self.margin), keep_pos) / self.alpha
        neg = _log1p_sum_exp(self.beta * (sims - self.margin), keep_neg) / self.beta
        return (pos + neg).mean()


def multi_similarity(num_classes: int, embedding_size: int, *, margin: float, alpha: float, beta: float,
                     epsilon: float) -> MultiSimilarity:
    """Multi-Similarity with λ = margin, α, β and the miner's ε (defaults in spaces/ms.py: 0.5, 2, 50, 0.1)."""
    return MultiSimilarity(margin=margin, alpha=alpha, beta=beta, epsilon=epsilon)
