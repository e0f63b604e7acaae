"""A real tournament on small glyphs: one Tuner, warm workers serving every loss, one study per loss with
the paper's defaults first, and a resume that keeps the losses already finished."""
from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from ray_helpers import DEFAULTS, ResultLog, glyph_setup

from spaces import default_config, define_by_run
from trainables.study import LOSS_KEY, RAY_TRIAL_ID_ATTR, study_name, study_url
from trainables.tune_search import LossSearch, SearchSettings, run_tournament

FIRST = ("proxy_anchor", "ms")  # the first driver's tournament
LATER = (*FIRST, "triplet")  # a later driver's, with one loss more
TRIALS = 2


def _searches(losses: tuple[str, ...]) -> list[LossSearch]:
    return [LossSearch(loss, define_by_run(loss, DEFAULTS), [default_config(loss, DEFAULTS)]) for loss in losses]


def _study(run_dir, loss: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name(loss, tournament=True), storage=study_url(run_dir))


@pytest.fixture(scope="module")
def tournament(tmp_path_factory) -> SimpleNamespace:
    run_dir = tmp_path_factory.mktemp("tournament")
    setup = dataclasses.replace(glyph_setup(2), loss=None)
    # One trial slot (a trial takes every CPU), so which worker runs which trial does not depend on timing.
    settings = SearchSettings(trials=TRIALS, max_epochs=2, cpus_per_trial=float(os.cpu_count() or 1))
    first, later, lines = ResultLog(), ResultLog(), []
    run_tournament(run_dir, setup, _searches(FIRST), settings, echo=lambda line: None, callbacks=[first])
    run_tournament(run_dir, setup, _searches(LATER), settings, echo=lines.append, callbacks=[later])
    return SimpleNamespace(run_dir=run_dir, first=first, later=later, lines=lines)


def test_each_loss_has_its_own_study_with_the_papers_defaults_first(tournament) -> None:
    for loss in LATER:
        trials = _study(tournament.run_dir, loss).get_trials()
        assert len(trials) == TRIALS and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert trials[0].params == default_config(loss, DEFAULTS)
        ids = {t.user_attrs[RAY_TRIAL_ID_ATTR] for t in trials}
        configs = tournament.first.configs | tournament.later.configs
        assert {configs[i][LOSS_KEY] for i in ids} == {loss}  # every result reached its own loss's study


def test_warm_workers_serve_every_loss(tournament) -> None:
    log = tournament.first
    pids = {loss: {r["pid"] for tid, rs in log.results.items() for r in rs if log.configs[tid][LOSS_KEY] == loss}
            for loss in FIRST}
    assert pids[FIRST[0]] == pids[FIRST[1]] and len(pids[FIRST[0]]) == 1  # one warm worker ran both losses


def test_a_resumed_tournament_keeps_the_finished_losses_and_says_so(tournament) -> None:
    assert {c[LOSS_KEY] for c in tournament.later.configs.values()} == {"triplet"}
    assert any(line.startswith(f"resume: {TRIALS * len(FIRST)} finished trials kept")
               and line.endswith("losses already finished: proxy_anchor, ms") for line in tournament.lines)
