"""Retrieval metrics (Recall@K, MAP@R, R-precision) and clustering NMI (docs/metrics.md).

Embeddings are L2-normalised and compared by cosine similarity. Without a gallery each query
retrieves among the other items (itself excluded by index, so an identical duplicate still
counts as another item); with a gallery (In-Shop) queries retrieve from the gallery and
nothing is excluded.

Ties (pessimistic, order-free): a negative whose similarity equals a positive's (in float32) is
ranked ahead of that positive; how tied positives are ordered among themselves changes nothing.
So duplicates of a negative can only lower a score, and the result never depends on item order.

Exclusions: R is the number of the query's class-mates among the retrieved items. Queries with
R = 0 (a class with no other item) have no defined Recall@K or MAP@R and are left out of every
metric; each metric is the mean over the remaining queries.

Speed (docs/metrics.md): the chunked similarity product is the floor; nothing here sorts a whole row.
Recall@K needs only the rank of the best positive, i.e. how many negatives score at least as
high (one compare-and-count pass); MAP@R needs only the R best negatives (a top-k with k = the
largest R, found from block maxima). The same torch code runs on CPU and GPU (the `device`
argument). faiss is used for k-means (NMI), not for k-NN: k-NN with k = 1000 needs the top-k this
module avoids, and the OpenBLAS bundled in the faiss-cpu wheel (0.3.15) falls back to an SSE3
kernel on CPUs it does not recognise (74.6 s for SOP's k-NN on one; docs/metrics.md).
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["retrieval_metrics", "nmi"]

# Similarity buffer per chunk when chunk_size is not given: 256 MiB keeps SOP's test set
# (60,502 items) well under 1 GiB of extra memory while chunks stay large enough for a fast GEMM.
_CHUNK_BYTES = 256 * 2**20
# Columns per block in _top_values: one block maximum per 128 similarities.
_BLOCK = 128


def _normalised(x: torch.Tensor | np.ndarray, name: str, device: torch.device) -> torch.Tensor:
    """A float32 L2-normalised copy on `device`; the caller's array is never modified."""
    t = torch.as_tensor(x).detach()
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [N, D] array, but got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        raise ValueError(f"{name} must hold floats, but got dtype {t.dtype}.")
    t = t.to(device=device, dtype=torch.float32)
    bad = int((~torch.isfinite(t).all(dim=1)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} rows with NaN or infinite values; similarities would be undefined.")
    return F.normalize(t, dim=1)


def _class_ids(y: torch.Tensor | np.ndarray | Sequence[int], n: int, name: str,
               device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"{name} must be 1-D with one label per embedding ({n}), but got shape {tuple(t.shape)}.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class ids, but got dtype {t.dtype}.")
    return t.to(device=device, dtype=torch.int64)


def _positive_int(value: object, name: str) -> int:
    """`value` as an int >= 1 (numpy integers welcome); bools and floats are mistakes."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, but got {value!r}.") from None
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, but got {number}.")
    return number


def _top_values(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row, descending, for the price of one max pass over the rows.

    Each row is cut into blocks of _BLOCK columns (its width must be a multiple). For every i <= k
    the k blocks with the largest maxima hold at least i values >= the row's i-th largest: either
    they include every block holding one of its i largest values, or all k of their maxima are
    >= a left-out block's maximum >= that i-th value. So their top k equals the row's, ties included.
    """
    blocks = rows.view(len(rows), -1, _BLOCK)
    best = torch.topk(blocks.amax(2), min(k, blocks.shape[1]), dim=1).indices
    candidates = blocks.gather(1, best.unsqueeze(2).expand(-1, -1, _BLOCK)).flatten(1)
    return torch.topk(candidates, k, dim=1).values


@torch.no_grad()
def retrieval_metrics(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    gallery_embeddings: torch.Tensor | np.ndarray | None = None,
    gallery_labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    map_at_r: bool = True,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K for each K in `ks`, plus "map@r" and "r_precision" (Musgrave et al. 2020) if `map_at_r`.

    Queries are processed `chunk_size` rows at a time (default: a 256 MiB similarity buffer,
    reused across chunks), so no N x N matrix is ever held. `device` defaults to the device of
    `embeddings` (CPU for numpy input). See the module docstring for the tie rule and exclusions.
    """
    ks = tuple(_positive_int(k, "each K in ks") for k in ks)
    if not ks:
        raise ValueError("ks must name at least one K, but got an empty sequence.")
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError("Give gallery_embeddings and gallery_labels together (In-Shop), or neither, "
                         f"but got gallery_embeddings={'None' if gallery_embeddings is None else 'array'} and "
                         f"gallery_labels={'None' if gallery_labels is None else 'array'}.")
    if chunk_size is not None:
        chunk_size = _positive_int(chunk_size, "chunk_size")
    if device is None:
        device = embeddings.device if isinstance(embeddings, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)

    queries = _normalised(embeddings, "embeddings", device)
    query_labels = _class_ids(labels, len(queries), "labels", device)
    if gallery_embeddings is None:
        gallery, gallery_labels_t, exclude_self = queries, query_labels, True
    else:
        gallery = _normalised(gallery_embeddings, "gallery_embeddings", device)
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(f"gallery_embeddings have dimension {gallery.shape[1]}, but embeddings have "
                             f"{queries.shape[1]}.")
        gallery_labels_t = _class_ids(gallery_labels, len(gallery), "gallery_labels", device)
        exclude_self = False

    # Class members of the gallery as runs of one sorted index, so a query's positives are
    # order[start : start + count] without any [queries x gallery] label-match matrix.
    order = torch.argsort(gallery_labels_t, stable=True)
    classes, counts = torch.unique_consecutive(gallery_labels_t[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(classes, query_labels).clamp_(max=len(classes) - 1)
    same_class = torch.where(classes[slot] == query_labels, counts[slot], 0)
    r_all = same_class - int(exclude_self)  # R per query
    kept = torch.nonzero(r_all > 0).squeeze(1)
    if len(kept) == 0:
        raise ValueError("No query has another item of its class to retrieve (every R is 0), so Recall@K and "
                         "MAP@R are undefined; check the labels and the query/gallery split.")

    n_gallery = len(gallery)
    rows_per_chunk = chunk_size or max(1, _CHUNK_BYTES // (4 * n_gallery))
    rows_per_chunk = min(rows_per_chunk, len(kept))
    # Padded to whole blocks for _top_values; the padding stays -inf, below every similarity.
    # It also aligns every row to 64 bytes, which made MKL's fp32 GEMM ~20 % faster here.
    width = -(-n_gallery // _BLOCK) * _BLOCK
    sims_buffer = torch.full((rows_per_chunk, width), float("-inf"), device=device)
    # float32 counts 0/1 exactly up to 2**24; summing in float64 would copy the whole chunk.
    count_dtype = torch.float32 if n_gallery < 2**24 else torch.float64
    gallery_t = gallery.T
    hits = torch.zeros(len(ks), dtype=torch.int64, device=device)
    ks_t = torch.tensor(ks, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    rp_sum = torch.zeros((), dtype=torch.float64, device=device)

    for lo in range(0, len(kept), rows_per_chunk):
        rows = kept[lo: lo + rows_per_chunk]
        padded = sims_buffer[: len(rows)]
        sims = padded[:, :n_gallery]
        torch.mm(queries[rows], gallery_t, out=sims)

        # Positives of each row, padded by repeating the class's last member; in the
        # self-excluding case the list includes the query itself, which is masked like a pad.
        n_same, r = same_class[rows], r_all[rows]
        j = torch.arange(int(n_same.max()), device=device)
        pos_idx = order[starts[slot[rows]].unsqueeze(1) + torch.minimum(j, n_same.unsqueeze(1) - 1)]
        is_pos = j < n_same.unsqueeze(1)
        if exclude_self:
            is_pos &= pos_idx != rows.unsqueeze(1)
        pos_sims = sims.gather(1, pos_idx).masked_fill_(~is_pos, float("-inf"))
        pos_sims = pos_sims.sort(dim=1, descending=True).values
        # Positives and self leave the row: what remains is exactly the negatives.
        sims.scatter_(1, pos_idx, float("-inf"))

        if map_at_r:
            # Position (1-based) of the k-th best positive = k + number of negatives scoring >= it
            # (pessimistic ties). Only positions <= R matter, so the top-max(R) negatives suffice.
            r_max = int(r.max())
            top_neg = _top_values(padded, r_max).flip(1).contiguous()  # ascending
            kth = pos_sims[:, :r_max].contiguous()
            neg_ahead = r_max - torch.searchsorted(top_neg, kth, side="left")
            k = torch.arange(1, r_max + 1, device=device)
            position = k + neg_ahead
            in_top_r = (k <= r.unsqueeze(1)) & (position <= r.unsqueeze(1))
            precision = torch.where(in_top_r, k.to(torch.float64) / position, 0.0)
            r64 = r.to(torch.float64)
            ap_sum += (precision.sum(1) / r64).sum()
            rp_sum += (in_top_r.sum(1) / r64).sum()

        # Rank (0-based) of the best positive = negatives scoring >= it; compared in place, as a
        # float 0/1 row, because torch sums float rows several times faster than bool rows.
        best = pos_sims[:, :1]
        rank = torch.ge(sims, best, out=sims).sum(1, dtype=count_dtype)
        hits += (rank.unsqueeze(1) < ks_t).sum(0)

    n = len(kept)
    out = {f"recall@{k}": v / n for k, v in zip(ks, hits.tolist())}
    if map_at_r:
        out["map@r"] = ap_sum.item() / n
        out["r_precision"] = rp_sum.item() / n
    return out


def nmi(embeddings: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int],
        seed: int = 0, starts: int = 3) -> float:
    """Normalised mutual information between the labels and a seeded k-means (k = number of classes).

    k-means runs through faiss (20 Lloyd iterations, the faiss and PML default) on the L2-normalised
    embeddings, the space retrieval is scored in. Each of `starts` runs is seeded by k-means++ and
    the partition with the lowest k-means objective is scored. faiss's own start (k points drawn
    uniformly) often puts two centroids in one cluster and merges two others: on 10 well-separated
    clusters it scored NMI 0.81-0.96 where the true partition scores 1, and ten such starts still
    missed it in every try; one k-means++ start found it in all of them.
    """
    if starts < 1:
        raise ValueError(f"nmi needs at least one k-means start, but got starts={starts}.")
    # Imported here: only NMI needs them, and the trainer's per-epoch Recall@K should not load
    # faiss's own OpenMP/BLAS or scikit-learn.
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    cpu = torch.device("cpu")
    x = np.ascontiguousarray(_normalised(embeddings, "embeddings", cpu).numpy(), dtype=np.float32)
    y = _class_ids(labels, len(x), "labels", cpu).numpy()
    n_classes = len(np.unique(y))
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for start in range(starts):
        # min_points_per_centroid=1: k = number of classes is fixed by the protocol, so faiss's
        # "too few points per centroid" warning would only be noise.
        kmeans = faiss.Kmeans(x.shape[1], n_classes, niter=20, seed=seed + start, min_points_per_centroid=1)
        kmeans.train(x, init_centroids=_kmeans_plus_plus(x, n_classes, rng))
        if best is None or kmeans.obj[-1] < best[0]:
            best = (kmeans.obj[-1], kmeans.index.search(x, 1)[1][:, 0])
    return float(normalized_mutual_info_score(y, best[1]))


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 256) -> np.ndarray:
    """k starting centroids drawn by k-means++ (Arthur & Vassilvitskii, 2007) from the unit rows of x.

    Each next centroid is a point drawn with probability proportional to its squared distance to
    the nearest centroid so far (2 - 2·cos for unit vectors). Exact k-means++ costs one pass over x
    per centroid: minutes for SOP's 11,316 classes. So the draws come in at most `rounds` blocks of
    ceil(k / rounds) points each, one matrix product per block: exact for k <= rounds (CUB, Cars).
    """
    n = len(x)
    block = -(-k // rounds)
    chosen = [int(rng.integers(n))]
    nearest = np.maximum(2 - 2 * (x @ x[chosen[0]]), 0)
    while len(chosen) < k:
        size = min(block, k - len(chosen))
        # Fewer points left away from every centroid than asked for (duplicates): any points will do.
        p = nearest / nearest.sum() if np.count_nonzero(nearest) >= size else None
        new = rng.choice(n, size=size, replace=False, p=p)
        chosen.extend(new.tolist())
        np.minimum(nearest, np.maximum(2 - 2 * (x @ x[new].T).max(axis=1), 0), out=nearest)
    return x[chosen]
