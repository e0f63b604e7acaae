"""Contrastive and Triplet: PML's losses, set to the cosine forms the fixed-validation thesis tabulates
(Psomas 2020; docs/spaces.md#fixed-validation-study).

Contrastive (Hadsell et al. 2006, in the similarity form of the thesis / MS paper):

    pairs (i, j), i ≠ j:   positive  [1 − S_ij]_+          (≡ −S_ij up to a constant)
                           negative  [S_ij − λ]_+          λ = `margin`, thesis 0.5
    loss = mean of the non-zero positive terms + mean of the non-zero negative terms

Triplet (Schroff et al. 2015, FaceNet) with semi-hard mining, in cosine similarity:

    triplets (a, p, n) with 0 < S_ap − S_an ≤ m   (semi-hard: the negative is farther than the
                                                   positive but inside the margin)
    loss = mean of the non-zero [S_an − S_ap + m]_+   m = `margin`, thesis 0.1

On unit vectors ‖a−p‖² = 2 − 2·S_ap, so FaceNet's α = 0.2 on squared distances is exactly a
cosine margin of 0.1 (with the loss doubled): the thesis's 0.1 and FaceNet's 0.2 agree.

Averaging over the non-zero terms is PML's default reducer (AvgNonZeroReducer); the papers sum,
which ties the step size to how many pairs are active. Both losses use every pair/triplet of the
batch (PML enumerates them; a missing case — no positive pair, no semi-hard triplet — is 0).

The triplet miner's type is a fixed choice, "semihard" as in FaceNet and the thesis ("Triplet:
semi-hard"), not searched: "all" would equal no miner at all (the reducer already ignores
satisfied triplets) and "hard" negatives alone can collapse the model early in training
(FaceNet, "Triplet Selection"). It stays a constructor argument (`mining`) for experiments
outside the search.
"""
from __future__ import annotations

from pytorch_metric_learning import distances, losses, miners
from torch import nn

from trainables.losses.base import MinedLoss

TRIPLET_MINING = ("semihard", "hard", "all")


def contrastive(num_classes: int, embedding_size: int, *, margin: float) -> nn.Module:
    """Contrastive: pull positives ([1 − S]_+), push negatives above the similarity λ = margin."""
    return losses.ContrastiveLoss(pos_margin=1.0, neg_margin=margin, distance=distances.CosineSimilarity())


def triplet(num_classes: int, embedding_size: int, *, margin: float, mining: str = "semihard") -> MinedLoss:
    """Triplet with margin m on cosine similarities, its triplets mined by PML's TripletMarginMiner."""
    if mining not in TRIPLET_MINING:
        raise ValueError(f"Triplet mining must be one of {TRIPLET_MINING}, but got {mining!r}.")
    if not margin > 0:
        raise ValueError(f"Triplet margin must be positive (semi-hard mining keeps nothing at 0), but got {margin}.")
    return MinedLoss(
        losses.TripletMarginLoss(margin=margin, distance=distances.CosineSimilarity()),
        miners.TripletMarginMiner(margin=margin, type_of_triplets=mining, distance=distances.CosineSimilarity()),
    )
