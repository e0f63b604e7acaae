"""Search spaces: the papers' defaults (written out here, not imported), points of their spaces, documented names."""
from __future__ import annotations

import math

import optuna
import pytest

from spaces import SPACES, OptimiserDefaults, default_config, define_by_run

# The papers' values, typed in from the papers (docs/spaces.md); the sources are in each space's docstring.
PAPER_DEFAULTS: dict[str, dict[str, float | str]] = {
    "proxy_anchor": {"margin": 0.1, "alpha": 32.0},                                # Kim et al. 2020, Sec. 4.2
    "proxy_nca": {"scale": 64.0},                                     # Proxy-Anchor's baseline, on cosines
    "softtriple": {"margin": 0.01, "scale": 20.0, "gamma": 0.1, "tau": 0.2},        # paper; thesis 1/γ = 10
    "ms": {"margin": 0.5, "alpha": 2.0, "beta": 50.0, "epsilon": 0.1},              # docs/spaces.md
    "contrastive": {"margin": 0.5},                                                 # thesis table
    "triplet": {"margin": 0.1},                                                     # thesis table
    "pd": {"proxy_init": "random"},                                                 # paper's runs
}
HAS_PROXIES = {"proxy_anchor": True, "proxy_nca": True, "softtriple": True, "pd": True,
               "ms": False, "contrastive": False, "triplet": False}
# Thesis optima on CUB (docs/spaces.md): the search must be able to propose them (γ = 1/58).
THESIS_OPTIMA: dict[str, dict[str, float]] = {
    "ms": {"margin": 0.8, "alpha": 18.0, "beta": 76.0, "epsilon": 0.4},
    "softtriple": {"margin": 0.4, "scale": 78.0, "gamma": 1 / 58, "tau": 0.4},
    "proxy_anchor": {"margin": 0.1, "alpha": 32.0},
}
OPTIMISER_NAMES = {"lr", "weight_decay"}


def _ask(loss: str, point: dict | None = None, seed: int = 0) -> optuna.Trial:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    if point is not None:
        study.enqueue_trial(point)
    trial = study.ask()
    define_by_run(loss, OptimiserDefaults())(trial)
    return trial


def test_every_space_is_listed_here() -> None:
    assert set(SPACES) == set(PAPER_DEFAULTS)


@pytest.mark.parametrize("loss", sorted(PAPER_DEFAULTS))
def test_defaults_are_the_papers(loss: str) -> None:
    module, has_proxies = SPACES[loss]
    assert module.DEFAULTS == PAPER_DEFAULTS[loss]
    assert has_proxies == HAS_PROXIES[loss]


@pytest.mark.parametrize("loss", sorted(PAPER_DEFAULTS))
def test_defaults_are_a_point_of_the_space(loss: str) -> None:
    defaults = default_config(loss, OptimiserDefaults())
    assert _ask(loss, defaults).params == defaults


@pytest.mark.parametrize("loss", sorted(THESIS_OPTIMA))
def test_thesis_optima_are_points_of_the_space(loss: str) -> None:
    point = {k: v for k, v in default_config(loss, OptimiserDefaults()).items()} | THESIS_OPTIMA[loss]
    params = _ask(loss, point).params
    assert all(math.isclose(params[k], v) for k, v in point.items())


@pytest.mark.parametrize("loss", sorted(PAPER_DEFAULTS))
def test_suggest_proposes_only_the_documented_names(loss: str) -> None:
    module, has_proxies = SPACES[loss]
    expected = set(PAPER_DEFAULTS[loss]) | OPTIMISER_NAMES | ({"proxy_lr"} if has_proxies else set())
    for seed in range(3):
        assert set(_ask(loss, seed=seed).params) == expected
    for name in PAPER_DEFAULTS[loss]:  # each name is a row of the module's table
        assert f"| {name} " in module.__doc__, f"{name} is not in the table of spaces/{loss}.py"


def test_softtriple_searches_the_papers_gamma_not_its_inverse() -> None:
    gammas = [_ask("softtriple", seed=s).params["gamma"] for s in range(20)]
    assert all(0.01 <= g <= 0.1 for g in gammas)


def test_pd_proposes_both_proxy_starts() -> None:
    assert {_ask("pd", seed=s).params["proxy_init"] for s in range(20)} == {"random", "class_mean"}


def test_unknown_space_is_named() -> None:
    with pytest.raises(ValueError, match="arcface"):
        define_by_run("arcface", OptimiserDefaults())
