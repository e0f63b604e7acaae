"""Each loss against an independent float64 reference written here from its paper's formula.

The references loop over samples, pairs and triplets in numpy, share the module's proxies/centres,
and must agree to 1e-5 on random batches that include a single-sample class and, for proxy
losses, a class with no sample at all.
"""
from __future__ import annotations

import inspect
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import regularizers as pml_regularizers

from spaces import SPACES
from trainables.losses import LOSSES, MinedLoss, ProxyInitMixin, build_loss, loss_factory
from trainables.losses.multi_similarity import MultiSimilarity
from trainables.losses.softtriple import SoftTriple

TOL = {"rel": 1e-5, "abs": 1e-5}
C, D = 7, 8
# Class 3 has a single sample; class 6 has none (its proxy is a negative only).
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5])


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Proxies and centres start from torch's global generator: fix it so every run is the same."""
    torch.manual_seed(0)


def _batch(seed: int = 0, labels: np.ndarray = LABELS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), D, generator=g, dtype=torch.float64), torch.as_tensor(labels)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy().copy()


def _value_and_grads(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The module's value; its backward must give finite gradients to the inputs and parameters."""
    x = x.clone().requires_grad_(True)
    value = loss(x, y)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(x.grad).all()
    for p in loss.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    return value.item()


def _log1p_sum_exp(z: list[float]) -> float:
    return math.log1p(sum(math.exp(v) for v in z))


# ---------------------------------------------------------------- references, from the papers


def ref_proxy_anchor(x: np.ndarray, y: np.ndarray, proxies: np.ndarray, alpha: float, delta: float) -> float:
    """Proxy-Anchor, Eq. 4 (Kim et al. 2020)."""
    x, p = _unit(x), _unit(proxies)
    positive_proxies = sorted(set(y.tolist()))
    pos = sum(_log1p_sum_exp([-alpha * (x[i] @ p[c] - delta) for i in range(len(x)) if y[i] == c])
              for c in positive_proxies)
    neg = sum(_log1p_sum_exp([alpha * (x[i] @ p[c] + delta) for i in range(len(x)) if y[i] != c])
              for c in range(len(p)))
    return pos / len(positive_proxies) + neg / len(p)


def ref_proxy_nca(x: np.ndarray, y: np.ndarray, proxies: np.ndarray, scale: float) -> float:
    """Proxy-NCA, Eq. 2 (Kim et al. 2020): −s(x,p+) + LSE over the negative proxies only; mean over x."""
    x, p = _unit(x), _unit(proxies)
    terms = []
    for i in range(len(x)):
        negatives = [math.exp(scale * x[i] @ p[c]) for c in range(len(p)) if c != y[i]]
        terms.append(-scale * x[i] @ p[y[i]] + math.log(sum(negatives)))
    return float(np.mean(terms))


def ref_softtriple(x: np.ndarray, y: np.ndarray, fc: np.ndarray, k: int, la: float, gamma: float, delta: float,
                   tau: float) -> float:
    """SoftTriple (Qian et al. 2019): relaxed similarity, margin on the true class, centre regulariser."""
    x = _unit(x)
    centres = _unit(fc.T).reshape(-1, k, fc.shape[0])          # (C, K, D), column c·K + j -> centres[c, j]
    n_classes = len(centres)
    losses = []
    for i in range(len(x)):
        logits = []
        for c in range(n_classes):
            s = centres[c] @ x[i]
            w = np.exp(s / gamma) / np.exp(s / gamma).sum()
            logits.append(la * ((w * s).sum() - (delta if c == y[i] else 0.0)))
        logits = np.array(logits)
        losses.append(-(logits[y[i]] - math.log(np.exp(logits).sum())))
    reg = sum(np.linalg.norm(centres[c, s] - centres[c, t])
              for c in range(n_classes) for s in range(k) for t in range(s + 1, k))
    return float(np.mean(losses)) + tau * reg / (n_classes * k * (k - 1))


def ref_ms(x: np.ndarray, y: np.ndarray, alpha: float, beta: float, lam: float, eps: float) -> float:
    """Multi-Similarity (Wang et al. 2019): ε-mined pairs, then the soft weighting of both sets."""
    x = _unit(x)
    s = x @ x.T
    total = 0.0
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and y[j] == y[i]]
        neg = [k for k in range(len(x)) if y[k] != y[i]]
        if not pos or not neg:
            continue
        kept_neg = [k for k in neg if s[i, k] > min(s[i, j] for j in pos) - eps]
        kept_pos = [j for j in pos if s[i, j] < max(s[i, k] for k in neg) + eps]
        total += _log1p_sum_exp([-alpha * (s[i, j] - lam) for j in kept_pos]) / alpha
        total += _log1p_sum_exp([beta * (s[i, k] - lam) for k in kept_neg]) / beta
    return total / len(x)


def _mean_nonzero(values: list[float]) -> float:
    nonzero = [v for v in values if v > 0]
    return float(np.mean(nonzero)) if nonzero else 0.0


def ref_contrastive(x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """Contrastive in the thesis's similarity form: [1 − S]_+ on positives, [S − λ]_+ on negatives."""
    x = _unit(x)
    pos, neg = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j and y[i] == y[j]:
                pos.append(max(0.0, 1 - x[i] @ x[j]))
            elif i != j:
                neg.append(max(0.0, x[i] @ x[j] - lam))
    return _mean_nonzero(pos) + _mean_nonzero(neg)


def ref_triplet(x: np.ndarray, y: np.ndarray, m: float) -> float:
    """Triplet (FaceNet) on semi-hard triplets 0 < S_ap − S_an ≤ m, cosine similarities."""
    x = _unit(x)
    terms = []
    for a in range(len(x)):
        for p in range(len(x)):
            for n in range(len(x)):
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    gap = x[a] @ x[p] - x[a] @ x[n]
                    if 0 < gap <= m:
                        terms.append(max(0.0, m - gap))
    return _mean_nonzero(terms)


def ref_pd(x: np.ndarray, y: np.ndarray, proxies: np.ndarray, eps: float = 1e-6) -> float:
    """PD-Loss (docs/losses.md#pd-loss): −log(μ_gen − μ_imp) + ½ log(σ²_gen + σ²_imp), ε-clamped."""
    x, p = _unit(x), _unit(proxies)
    genuine = [x[i] @ p[y[i]] for i in range(len(x))]
    impostor = [x[i] @ p[c] for i in range(len(x)) for c in range(len(p)) if c != y[i]]
    gap = max(np.mean(genuine) - np.mean(impostor), eps)
    spread = max(np.var(genuine) + np.var(impostor), eps)
    return -math.log(gap) + 0.5 * math.log(spread)


# ---------------------------------------------------------------- each loss equals its reference


@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_anchor_is_eq_4(seed: int) -> None:
    loss = build_loss("proxy_anchor", C, D, {"margin": 0.1, "alpha": 32.0})
    x, y = _batch(seed)
    value = _value_and_grads(loss, x, y)
    assert value == pytest.approx(ref_proxy_anchor(_np(x), y.numpy(), _np(loss.proxies), 32.0, 0.1), **TOL)


@pytest.mark.parametrize("scale", [1.0, 32.0])
def test_proxy_nca_is_eq_2_with_a_scale(scale: float) -> None:
    loss = build_loss("proxy_nca", C, D, {"scale": scale})
    x, y = _batch(2)
    value = _value_and_grads(loss, x, y)
    assert value == pytest.approx(ref_proxy_nca(_np(x), y.numpy(), _np(loss.proxies), scale), **TOL)


@pytest.mark.parametrize("scale", [1.0, 4.0])  # small enough that softplus(ℓ) and ℓ differ visibly
def test_proxy_nca_is_not_pmls_which_keeps_the_positive_in_the_denominator(scale: float) -> None:
    """On the same cosines and scale, PML's softmax over all proxies is softplus of Eq. 2's term, sample by sample."""
    ours = build_loss("proxy_nca", C, D, {"scale": scale})
    x, y = _batch(3)
    pml = pml_losses.ProxyNCALoss(C, D, softmax_scale=scale, distance=pml_distances.CosineSimilarity())
    with torch.no_grad():
        pml.proxies.copy_(ours.proxies)
        per_sample = torch.stack([ours(x[i: i + 1], y[i: i + 1]) for i in range(len(y))])
        assert pml(x, y).item() == pytest.approx(torch.nn.functional.softplus(per_sample).mean().item(), **TOL)
        assert not math.isclose(ours(x, y).item(), pml(x, y).item(), rel_tol=1e-3)


@pytest.mark.parametrize("tau", [0.0, 0.2])
def test_softtriple_is_the_papers(tau: float) -> None:
    params = {"margin": 0.01, "scale": 20.0, "gamma": 0.1, "tau": tau}
    loss = build_loss("softtriple", C, D, params | {"centers_per_class": 3})
    x, y = _batch(4)
    value = _value_and_grads(loss, x, y)
    expected = ref_softtriple(_np(x), y.numpy(), _np(loss.fc), 3, la=20.0, gamma=0.1, delta=0.01, tau=tau)
    assert value == pytest.approx(expected, **TOL)


@pytest.mark.parametrize("tau", [0.0, 0.4])
def test_softtriple_equals_pml_given_the_papers_gamma(tau: float) -> None:
    """PML's `gamma` is the paper's γ: it stores 1/γ and multiplies; ours stores γ and divides."""
    gamma, k = 0.05, 4
    ours = SoftTriple(C, D, margin=0.2, scale=30.0, gamma=gamma, tau=tau, centers_per_class=k)
    reg = ({"weight_regularizer": pml_regularizers.SparseCentersRegularizer(C, k), "weight_reg_weight": tau}
           if tau else {})
    pml = pml_losses.SoftTripleLoss(C, D, centers_per_class=k, la=30.0, gamma=gamma, margin=0.2, **reg)
    assert ours.gamma == gamma and pml.gamma == pytest.approx(1 / gamma)
    with torch.no_grad():
        pml.fc.copy_(ours.fc)
    x, y = _batch(5)
    assert ours(x, y).item() == pytest.approx(pml(x, y).item(), **TOL)


def test_softtriple_gamma_is_the_entropy_weight_small_picks_the_nearest_centre_large_averages() -> None:
    x = torch.nn.functional.normalize(_batch(6)[0], dim=1)
    sharp = SoftTriple(C, D, margin=0.0, scale=1.0, gamma=1e-5, tau=0.0, centers_per_class=3)
    w = torch.nn.functional.normalize(sharp.fc.detach().double(), dim=0)
    sims = (x @ w).view(len(x), C, 3)
    assert torch.allclose(sharp.class_similarities(x, w), sims.amax(dim=2), atol=1e-6)
    flat = SoftTriple(C, D, margin=0.0, scale=1.0, gamma=1e5, tau=0.0, centers_per_class=3)
    assert torch.allclose(flat.class_similarities(x, w), sims.mean(dim=2), atol=1e-5)


def test_softtriple_at_sop_scale_regularises_without_a_quadratic_matrix() -> None:
    """11,318 classes x 10 centres: PML's masks alone would be 2 x 1.28e10 booleans; ours is per class."""
    n_classes, k, dim = 11_318, 10, 16
    loss = build_loss("softtriple", n_classes, dim, {"margin": 0.01, "scale": 20.0, "gamma": 0.1, "tau": 0.2})
    x = torch.randn(32, dim)
    y = torch.randint(0, n_classes, (32,))
    start = time.perf_counter()
    _value_and_grads(loss, x, y)
    assert time.perf_counter() - start < 5.0
    w = torch.nn.functional.normalize(loss.fc.detach().double(), dim=0)
    centres = w.t().reshape(n_classes, k, dim).transpose(0, 1).contiguous()   # centres[j, c] = w_c^j
    expected = sum((centres[s] - centres[t]).norm(dim=1).sum() for s in range(k) for t in range(s + 1, k))
    assert loss.centre_regulariser(w).item() == pytest.approx(expected.item() / (n_classes * k * (k - 1)), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 7])
def test_multi_similarity_is_the_papers(seed: int) -> None:
    loss = build_loss("ms", C, D, {"margin": 0.5, "alpha": 2.0, "beta": 50.0, "epsilon": 0.1})
    x, y = _batch(seed)
    value = _value_and_grads(loss, x, y)
    assert value == pytest.approx(ref_ms(_np(x), y.numpy(), 2.0, 50.0, 0.5, 0.1), **TOL)
    assert value > 0


@pytest.mark.parametrize("epsilon", [0.1, 0.4])
def test_multi_similarity_equals_pml_when_more_than_one_pair_survives_mining(epsilon: float) -> None:
    ours = MultiSimilarity(margin=0.8, alpha=18.0, beta=76.0, epsilon=epsilon)
    pml = MinedLoss(pml_losses.MultiSimilarityLoss(alpha=18.0, beta=76.0, base=0.8),
                    pml_miners.MultiSimilarityMiner(epsilon=epsilon))
    x, y = _batch(8)
    unit = torch.nn.functional.normalize(x, dim=1)
    keep_pos, keep_neg = ours.mine(unit @ unit.t(), y)
    assert keep_pos.sum() > 1 and keep_neg.sum() > 1
    assert ours(x, y).item() == pytest.approx(pml(x, y).item(), **TOL)


def test_multi_similarity_is_not_zero_where_pml_drops_a_single_mined_pair() -> None:
    """Cosines 0.5 (positive), 0.45 and 0 (negatives): the miner keeps one positive and one negative pair."""
    b = -0.225 / math.sqrt(0.75)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0], [0.45, b, math.sqrt(1 - 0.45**2 - b**2)]],
                     dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    ours = MultiSimilarity(margin=0.5, alpha=2.0, beta=50.0, epsilon=0.1)
    keep_pos, keep_neg = ours.mine(x @ x.t(), y)
    assert keep_pos.sum() == 1 and keep_neg.sum() == 1
    pml = MinedLoss(pml_losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5),
                    pml_miners.MultiSimilarityMiner(epsilon=0.1))
    expected = ref_ms(_np(x), y.numpy(), 2.0, 50.0, 0.5, 0.1)
    assert expected > 0.1
    assert ours(x, y).item() == pytest.approx(expected, **TOL)
    assert pml(x, y).item() == 0.0


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_contrastive_is_the_similarity_form(margin: float) -> None:
    loss = build_loss("contrastive", C, D, {"margin": margin})
    x, y = _batch(9)
    value = _value_and_grads(loss, x, y)
    assert value == pytest.approx(ref_contrastive(_np(x), y.numpy(), margin), **TOL)


@pytest.mark.parametrize("margin", [0.1, 0.3])
def test_triplet_is_facenet_on_semihard_triplets(margin: float) -> None:
    loss = build_loss("triplet", C, D, {"margin": margin})
    x, y = _batch(10)
    value = _value_and_grads(loss, x, y)
    expected = ref_triplet(_np(x), y.numpy(), margin)
    assert expected > 0
    assert value == pytest.approx(expected, **TOL)


def test_triplet_with_no_semihard_triplet_is_zero_and_still_differentiable() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]], dtype=torch.float64)  # negative far beyond the margin
    y = torch.tensor([0, 0, 1])
    assert _value_and_grads(build_loss("triplet", 2, 2, {"margin": 0.1}), x, y) == 0.0


@pytest.mark.parametrize("seed", [0, 11])
def test_pd_loss_is_minus_log_decidability(seed: int) -> None:
    loss = build_loss("pd", C, D, {"proxy_init": "random"})
    x, y = _batch(seed)
    value = _value_and_grads(loss, x, y)
    assert value == pytest.approx(ref_pd(_np(x), y.numpy(), _np(loss.proxies)), **TOL)


def test_pd_loss_of_a_single_sample_has_zero_genuine_variance_and_is_finite() -> None:
    loss = build_loss("pd", C, D, {})
    x, y = _batch(12, labels=np.array([3]))
    value = _value_and_grads(loss, x, y)
    assert loss.statistics(x, y)["var_gen"].item() == 0.0
    assert value == pytest.approx(ref_pd(_np(x), y.numpy(), _np(loss.proxies)), **TOL)


def test_pd_loss_clamps_a_negative_mean_gap_and_keeps_gradients_finite() -> None:
    loss = build_loss("pd", C, D, {})
    x, y = _batch(13)
    with torch.no_grad():  # every sample's own proxy points away from it: μ_gen < μ_imp
        for c in range(C):
            if (y == c).any():
                loss.proxies[c] = -x[y == c].float().mean(0)
    stats = loss.statistics(x, y)
    assert stats["mu_gen"] < stats["mu_imp"]
    value = _value_and_grads(loss, x, y)
    assert value == pytest.approx(ref_pd(_np(x), y.numpy(), _np(loss.proxies)), **TOL)
    spread = (stats["var_gen"] + stats["var_imp"]).item()
    assert value == pytest.approx(-math.log(1e-6) + 0.5 * math.log(spread), **TOL)



def test_pd_loss_factory_passes_its_epsilon_to_the_clamp() -> None:
    loss = build_loss("pd", C, D, {"epsilon": 1e-2})
    x, y = _batch(13)
    with torch.no_grad():  # μ_gen < μ_imp, so the mean-gap clamp at ε is what the loss sees
        for c in range(C):
            if (y == c).any():
                loss.proxies[c] = -x[y == c].float().mean(0)
    stats = loss.statistics(x, y)
    spread = (stats["var_gen"] + stats["var_imp"]).item()
    assert loss.epsilon == 1e-2
    assert loss(x, y).item() == pytest.approx(-math.log(1e-2) + 0.5 * math.log(spread), **TOL)

# ---------------------------------------------------------------- proxies from class means

PROXY_LOSSES = {"proxy_anchor": {"margin": 0.1, "alpha": 32.0}, "proxy_nca": {"scale": 32.0}, "pd": {}}


@pytest.mark.parametrize("name", sorted(PROXY_LOSSES))
def test_init_proxies_from_points_each_present_proxy_at_its_class_mean(name: str) -> None:
    loss = build_loss(name, C, D, PROXY_LOSSES[name] | {"proxy_init": "class_mean"})
    assert isinstance(loss, ProxyInitMixin) and loss.needs_proxy_init
    x, y = _batch(14)
    with pytest.raises(RuntimeError, match="init_proxies_from"):
        loss(x, y)
    before = loss.proxies.detach().clone()
    loss.init_proxies_from(x.float(), y)
    assert not loss.needs_proxy_init
    after = loss.proxies.detach()
    for c in range(C):
        if (y == c).any():
            mean = torch.nn.functional.normalize(x[y == c], dim=1).mean(0).float()
            assert torch.nn.functional.cosine_similarity(after[c], mean, dim=0).item() == pytest.approx(1.0, abs=1e-6)
        else:
            assert torch.equal(after[c], before[c])  # class 6 has no sample: keeps its random proxy
    assert torch.allclose(after.norm(dim=1), before.norm(dim=1))  # only directions move
    assert torch.isfinite(loss(x, y))


def test_class_mean_start_separates_genuine_from_impostor_similarities() -> None:
    loss = build_loss("pd", C, D, {"proxy_init": "class_mean"})
    x, y = _batch(15)
    loss.init_proxies_from(x, y)
    stats = loss.statistics(x, y)
    assert stats["mu_gen"] > stats["mu_imp"] + 0.3


def test_proxy_initialisation_survives_a_checkpoint() -> None:
    source = build_loss("pd", C, D, {"proxy_init": "class_mean"})
    x, y = _batch(16)
    source.init_proxies_from(x, y)
    restored = build_loss("pd", C, D, {"proxy_init": "class_mean"})
    restored.load_state_dict(source.state_dict())
    assert not restored.needs_proxy_init and torch.equal(restored.proxies, source.proxies)


def test_random_proxies_need_no_initialisation() -> None:
    assert not any(build_loss(n, C, D, p).needs_proxy_init for n, p in PROXY_LOSSES.items())


def test_bad_proxy_init_is_named() -> None:
    with pytest.raises(ValueError, match="mean_of_class"):
        build_loss("pd", C, D, {"proxy_init": "mean_of_class"})


# ---------------------------------------------------------------- the registry's contract


def test_every_loss_has_a_search_space_and_every_space_a_loss() -> None:
    assert set(LOSSES) == set(SPACES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_builds_from_its_spaces_defaults_and_trains(name: str) -> None:
    module, has_proxies = SPACES[name]
    loss = build_loss(name, C, D, module.DEFAULTS)
    assert bool(list(loss.parameters())) == has_proxies
    keywords = {p.name for p in inspect.signature(loss_factory(name)).parameters.values() if p.kind == p.KEYWORD_ONLY}
    assert set(module.DEFAULTS) <= keywords
    x, y = _batch(17)
    _value_and_grads(loss, x.float(), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_on_cuda_and_takes_class_means_from_cpu_embeddings(name: str) -> None:
    module, _ = SPACES[name]
    loss = build_loss(name, C, D, module.DEFAULTS).to("cuda")
    x, y = _batch(18)
    if isinstance(loss, ProxyInitMixin):
        loss.init_proxies_from(x.float(), y)  # the trainer's embed() returns CPU tensors
    _value_and_grads(loss, x.float().cuda(), y.cuda())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_hyperparameter_the_loss_does_not_have_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="temperature"):
        build_loss(name, C, D, SPACES[name][0].DEFAULTS | {"temperature": 1.0})


def test_unknown_loss_is_named() -> None:
    with pytest.raises(ValueError, match="arcface"):
        build_loss("arcface", C, D, {})


@pytest.mark.parametrize("name,params", [("triplet", {"margin": 0.1, "mining": "hardest"}),
                                         ("softtriple", {"margin": 0.01, "scale": 20.0, "gamma": 0.0, "tau": 0.2}),
                                         ("ms", {"margin": 0.5, "alpha": -2.0, "beta": 50.0, "epsilon": 0.1})])
def test_out_of_range_hyperparameters_are_refused_with_their_value(name: str, params: dict) -> None:
    with pytest.raises(ValueError, match="hardest|gamma|alpha"):
        build_loss(name, C, D, params)


def test_labels_outside_the_classes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        build_loss("pd", C, D, {})(torch.randn(2, D), torch.tensor([0, 7]))


def test_pml_is_imported_only_for_the_losses_built_on_it() -> None:
    """Trial workers import the trainer; PML (with scipy.stats, ~1 s) must wait for a loss that uses it."""
    probe = ("import sys; import search, trainables.tune_search; from spaces import SPACES; "
             "from trainables.losses import build_loss; loaded = lambda: 'pytorch_metric_learning' in sys.modules; "
             "before = loaded(); build_loss('softtriple', 7, 8, SPACES['softtriple'][0].DEFAULTS); middle = loaded(); "
             "build_loss('proxy_anchor', 7, 8, SPACES['proxy_anchor'][0].DEFAULTS); print(before, middle, loaded())")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True"]
