"""Retrieval metrics against a brute-force reference: full similarity matrix, one sort per query."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables import metrics
from trainables.data import recipe
from trainables.metrics import nmi, retrieval_metrics

KS = (1, 2, 3, 4, 8, 1000)  # 3 exceeds the smallest class's R; 1000 exceeds N - 1


@pytest.fixture(params=[128, 3], ids=["block128", "block3"])
def block(request, monkeypatch) -> int:
    """Also run with tiny column blocks, so the top-R search must pick among many blocks."""
    monkeypatch.setattr(metrics, "_BLOCK", request.param)
    return request.param


def reference(q: np.ndarray, q_labels: np.ndarray, ks, g: np.ndarray | None = None,
              g_labels: np.ndarray | None = None) -> dict[str, float]:
    """Written from the definitions: sort every candidate, ties put negatives before positives."""
    exclude_self = g is None
    if exclude_self:
        g, g_labels = q, q_labels
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = q @ g.T
    recall, ap, rp = np.zeros(len(ks)), [], []
    for i in range(len(q)):
        candidates = np.arange(len(g))
        if exclude_self:
            candidates = candidates[candidates != i]
        relevant = g_labels[candidates] == q_labels[i]
        r = int(relevant.sum())
        if r == 0:
            continue
        # lexsort: last key is primary (similarity, descending); within ties False (negative) first.
        ranked = relevant[np.lexsort((relevant, -sims[i, candidates]))]
        first = int(np.argmax(ranked))
        recall += [first < k for k in ks]
        top_r = ranked[:r]
        precision_at = np.cumsum(top_r) / np.arange(1, r + 1)
        ap.append((precision_at * top_r).sum() / r)
        rp.append(top_r.sum() / r)
    out = {f"recall@{k}": v / len(ap) for k, v in zip(ks, recall)}
    return out | {"map@r": float(np.mean(ap)), "r_precision": float(np.mean(rp))}


def assert_matches(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def gaussian_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes of sizes 1..9 (a singleton included) with exact duplicates inside and across classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(9), np.arange(1, 10))
    rng.shuffle(labels)
    centres = rng.standard_normal((9, 8))
    x = centres[labels] + 1.2 * rng.standard_normal((len(labels), 8))
    x[5] = x[6]
    x[10] = x[11] = x[12]
    labels[11] = labels[10]
    return x.astype(np.float32), labels


def tied_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Entries in {-1, 0, 1} with four non-zeros: every cosine is a multiple of 1/4, computed exactly
    in any summation order, so ties are everywhere and both sides see the very same ties."""
    rng = np.random.default_rng(seed)
    n, d = 70, 6
    x = np.zeros((n, d), np.float32)
    for row in x:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    labels = rng.integers(0, 12, n)
    labels[0] = 99  # a singleton
    return x, labels


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
@pytest.mark.parametrize("make", [gaussian_set, tied_set])
def test_matches_brute_force_without_gallery(make, chunk_size, block) -> None:
    x, labels = make()
    assert_matches(retrieval_metrics(x, labels, KS, chunk_size=chunk_size), reference(x, labels, KS))


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("make", [gaussian_set, tied_set])
def test_matches_brute_force_with_gallery(make, chunk_size, block) -> None:
    x, labels = make(1)
    g, g_labels = make(2)
    q, q_labels = x[:40].copy(), labels[:40].copy()
    q[3] = g[4]  # a query identical to a gallery item: nothing is excluded with a gallery
    q_labels[7] = 12345  # a class absent from the gallery: excluded
    got = retrieval_metrics(q, q_labels, KS, gallery_embeddings=g, gallery_labels=g_labels, chunk_size=chunk_size)
    assert_matches(got, reference(q, q_labels, KS, g, g_labels))


def test_tie_rule_is_pessimistic_and_self_is_excluded_by_index() -> None:
    # Item 1 duplicates item 0 but is another item (and a negative for it); items 2 and 3 tie for item 0.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
    labels = np.array([0, 1, 0, 1])
    got = retrieval_metrics(x, labels, (1, 2, 3))
    # Query 0: 1 (negative, sim 1), then 3 (negative) before 2 (positive) at equal sim 0.6 -> rank 2.
    # Query 1: 0 (negative, sim 1), then 2 before 3 -> rank 2. Queries 2 and 3: their positive ties
    # with a negative at 0.6 -> rank 1. An optimistic rule would give ranks 1, 1, 0, 0.
    assert got["recall@1"] == 0.0
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["recall@3"] == 1.0
    # R = 1 for every query, so MAP@R = R-precision = Recall@1.
    assert got["map@r"] == got["r_precision"] == 0.0


def test_torch_input_explicit_cpu_and_numpy_input_agree_and_inputs_are_untouched() -> None:
    x, labels = gaussian_set(3)
    xt, lt = torch.from_numpy(x.copy()).double(), torch.from_numpy(labels)
    before = xt.clone()
    from_torch = retrieval_metrics(xt, lt, KS, device="cpu", chunk_size=5)
    assert torch.equal(xt, before)
    assert_matches(from_torch, retrieval_metrics(x, labels.tolist(), KS, device=torch.device("cpu")))


def test_without_map_at_r_only_recall_is_returned() -> None:
    x, labels = gaussian_set()
    assert list(retrieval_metrics(x, labels, (1, 10), map_at_r=False)) == ["recall@1", "recall@10"]


@pytest.mark.parametrize("kwargs, match", [
    ({"embeddings": np.zeros((4, 2, 1), np.float32)}, r"2-D.*\(4, 2, 1\)"),
    ({"embeddings": np.zeros((0, 2), np.float32), "labels": []}, r"\(0, 2\)"),
    ({"embeddings": np.zeros((4, 2), np.int64)}, "int64"),
    ({"labels": [0, 0, 1]}, r"\(3,\)"),
    ({"labels": [0.0, 0.0, 1.0, 1.0]}, "float64"),
    ({"ks": (1, 0)}, "got 0"),
    ({"ks": (1, 2.0)}, "got 2.0"),
    ({"ks": ()}, "empty"),
    ({"chunk_size": 0}, "chunk_size.*got 0"),
    ({"gallery_embeddings": np.ones((3, 2), np.float32)}, "gallery_labels=None"),
    ({"gallery_labels": [0, 1, 2]}, "gallery_embeddings=None"),
    ({"gallery_embeddings": np.ones((3, 5), np.float32), "gallery_labels": [0, 1, 2]}, "dimension 5"),
    ({"gallery_embeddings": np.ones((3, 2), np.float32), "gallery_labels": [0, 1]}, r"\(2,\)"),
    ({"embeddings": np.array([[1, 0], [np.nan, 1], [0, 1], [1, 1]], np.float32)}, "1 rows with NaN"),
    ({"labels": [0, 1, 2, 3]}, "every R is 0"),
])
def test_bad_input_raises_naming_the_value(kwargs, match) -> None:
    args = {"embeddings": np.eye(4, 2, dtype=np.float32), "labels": [0, 0, 1, 1]} | kwargs
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(args.pop("embeddings"), args.pop("labels"), **args)


def test_each_dataset_reports_the_recall_cutoffs_of_its_papers() -> None:
    """docs/metrics.md: the K lists come from the dataset recipe, one source for the trainer and the report."""
    assert recipe("sop").ks == (1, 10, 100, 1000)
    assert recipe("inshop").ks == (1, 10, 20, 30, 40, 50)
    assert recipe("cub").ks == recipe("cars").ks == recipe("glyphs").ks == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="'imagenet'.*'cars'"):
        recipe("imagenet")


def _separated_clusters(n_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters around random directions: the true partition is the only good k-means answer."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes) * 7 + 3, per_class)  # ids need not be 0..C-1
    centres = 10 * rng.standard_normal((n_classes, 16))
    x = centres[labels // 7] + 0.01 * rng.standard_normal((len(labels), 16))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("n_classes", [2, 10, 20])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_nmi_finds_the_known_partition_of_separated_clusters(n_classes: int, seed: int) -> None:
    # A single uniformly drawn faiss start scored 0.81-0.96 on these 10-cluster sets (two centroids
    # in one cluster, two clusters merged); the answer here is known to be 1.
    x, labels = _separated_clusters(n_classes, 30, seed)
    assert nmi(x, labels, seed=seed) == pytest.approx(1.0, abs=1e-6)
    assert nmi(x, labels, seed=seed, starts=1) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_of_random_labels_is_low(seed: int) -> None:
    x, labels = _separated_clusters(2, 40, seed)
    assert nmi(x, np.random.default_rng(seed).permutation(labels), seed=seed) < 0.1


def test_kmeans_plus_plus_seeds_one_centroid_in_each_separated_cluster() -> None:
    from trainables.metrics import _kmeans_plus_plus

    x, labels = _separated_clusters(20, 30, 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    seeds = _kmeans_plus_plus(x, 20, np.random.default_rng(0))
    owner = np.argmax(seeds @ x.T, axis=1)  # the item each seed is
    assert sorted(set(labels[owner])) == sorted(set(labels))


def test_nmi_refuses_zero_starts() -> None:
    x, labels = _separated_clusters(2, 5, 0)
    with pytest.raises(ValueError, match="starts=0"):
        nmi(x, labels, starts=0)


def test_nmi_ranks_separated_clusters_far_above_random_labels_with_many_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    x = (10 * rng.standard_normal((10, 16))[labels] + 0.01 * rng.standard_normal((300, 16))).astype(np.float32)
    assert nmi(x, labels) > 0.8
    assert nmi(x, rng.permutation(labels)) < 0.2
