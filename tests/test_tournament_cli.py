"""A tournament end to end through the CLI on a tiny budget: trials and results carry their loss, each loss's
config #1 is tested once per seed, the table picks by validation, and the test set is not looked at twice."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

import search
from results import ledger

LOSSES = ["ms", "triplet"]
ARGV = ["--loss", ",".join(LOSSES), "--trials", "2", "--max-epochs", "2", "--final-epochs", "1", "--seeds", "2",
        "--image-size", "16", "--embedding-size", "16"]  # small glyphs: seconds per epoch


@pytest.fixture(scope="module")
def tournament(tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("tournament")
    lines: list[str] = []
    argv = [*ARGV, "--out", str(out)]
    cfg = search.run_config(search.build_parser().parse_args(argv), argv)
    search.check_args(cfg, resume=False)
    assert search.run(cfg, resume=False, echo=lines.append) == 0
    return SimpleNamespace(out=out, lines=lines)


def test_trials_and_results_carry_their_loss_and_each_loss_is_tested_once_per_seed(tournament) -> None:
    trials = pd.read_parquet(tournament.out / "trials.parquet")
    assert trials.groupby("loss").size().to_dict() == {loss: 2 for loss in LOSSES}
    final = pd.read_parquet(tournament.out / "final.parquet")
    assert sorted(zip(final["loss"], final["config_rank"], final["seed"])) == [
        (loss, 1, seed) for loss in LOSSES for seed in (0, 1)]
    entries = ledger.read(tournament.out / ledger.LEDGER_NAME)
    assert sorted((e["selection"]["loss"], e["config"]["loss"], e["seed"]) for e in entries) == [
        (loss, loss, seed) for loss in LOSSES for seed in (0, 1)]
    config = json.loads((tournament.out / "config.json").read_text())["command"]
    assert config["losses"] == LOSSES and config["loss"] is None


def test_the_run_ends_with_the_table_and_the_pick_by_validation(tournament) -> None:
    text = "\n".join(tournament.lines)
    assert "tournament: each loss's best of 2 trials" in text and "test MAP@R" in text
    trials = pd.read_parquet(tournament.out / "trials.parquet")
    full = trials[trials["full_budget"]]
    best = full.loc[full["best_val_recall@1"].idxmax(), "loss"]  # both losses' defaults ran the full budget
    assert f"validation picks {best} " in text and "Kendall τ" in text and "n = 2 losses" in text
    report = (tournament.out / "report.html").read_text()
    assert "<h2>Tournament</h2>" in report and "validation curves per loss" in report


def test_a_second_look_is_refused_and_resume_shows_every_loss(tournament, capsys) -> None:
    before = (tournament.out / ledger.LEDGER_NAME).read_text()
    assert search.main([*ARGV, "--out", str(tournament.out)]) == 2
    assert "already evaluated" in capsys.readouterr().err
    assert search.main([*ARGV, "--resume", "--out", str(tournament.out)]) == 0
    out = capsys.readouterr().out
    assert "not testing again" in out and "ms #1" in out and "triplet #1" in out
    assert (tournament.out / ledger.LEDGER_NAME).read_text() == before
