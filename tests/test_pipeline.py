"""End to end with a tiny budget: the run directory (docs/protocol.md#run-directory), and one look at the test set."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest

import search
from results import ledger


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["--loss", "proxy_anchor", "--trials", "3", "--max-epochs", "2", "--final-epochs", "1",
            "--seed", "1", "--out", str(out)]
    assert search.main(argv) == 0
    return out


def test_run_directory_has_every_artefact(run_dir) -> None:
    for name in ("config.json", "study.db", "trials.parquet", "final.parquet", "test_ledger.jsonl", "report.html",
                 "ray"):
        assert (run_dir / name).exists(), name


def test_config_records_disjoint_splits_and_provenance(run_dir) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    split = {k: set(v) for k, v in config["split"].items()}
    assert split["fit"] and split["val"] and split["test"]
    assert not split["fit"] & split["val"] and not (split["fit"] | split["val"]) & split["test"]
    assert config["command"]["loss"] == "proxy_anchor" and config["dataset"]["sha256_16"]
    assert "torch" in config["versions"] and "ray" in config["versions"]


def test_trials_table_matches_study_and_asha_budget(run_dir) -> None:
    trials = pd.read_parquet(run_dir / "trials.parquet")
    study = optuna.load_study(study_name="dmltune", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(trials) == len(study.trials) == 3
    assert trials["epochs"].between(1, 2).all()
    # A trial with fewer epochs than the budget was stopped by ASHA and must be PRUNED, not COMPLETE.
    for _, row in trials.iterrows():
        assert row["state"] == ("complete" if row["epochs"] == 2 else "pruned")
        assert len(row["val_recall@1_curve"]) == row["epochs"]
        assert row["best_val_recall@1"] == pytest.approx(max(row["val_recall@1_curve"]))
        assert row["seconds"] > 0  # the trial's time on its worker, as Tune measured it
    first = study.trials[0].params  # the paper's defaults are evaluated first
    assert first["margin"] == 0.1 and first["alpha"] == 32.0


def test_final_and_ledger_hold_one_test_evaluation(run_dir) -> None:
    final = pd.read_parquet(run_dir / "final.parquet")
    entries = ledger.read(run_dir / ledger.LEDGER_NAME)
    assert len(final) == 1 and len(entries) == 1
    for k in (1, 2, 4, 8):
        assert 0 <= final[f"test_recall@{k}"].iloc[0] <= 1
    assert np.isclose(entries[0]["metrics"]["recall@1"], final["test_recall@1"].iloc[0])
    assert entries[0]["config_hash"] == final["config_hash"].iloc[0]
    assert set(entries[0]["split"]["test"]) == set(json.loads((run_dir / "config.json").read_text())["split"]["test"])


def test_a_second_test_of_a_finished_run_is_refused_showing_the_recorded_result(run_dir, capsys) -> None:
    before = (run_dir / ledger.LEDGER_NAME).read_text()
    assert search.main(["--loss", "proxy_anchor", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    recorded = 100 * ledger.read(run_dir / ledger.LEDGER_NAME)[0]["metrics"]["recall@1"]
    assert "already evaluated" in err and "second look" in err and f"{recorded:.2f}" in err
    assert (run_dir / ledger.LEDGER_NAME).read_text() == before


def test_resume_of_a_finished_run_prints_the_recorded_result(run_dir, capsys) -> None:
    before = (run_dir / ledger.LEDGER_NAME).read_text()
    assert search.main(["--loss", "proxy_anchor", "--resume", "--out", str(run_dir)]) == 0
    out = capsys.readouterr().out
    recorded = 100 * ledger.read(run_dir / ledger.LEDGER_NAME)[0]["metrics"]["recall@1"]
    assert "not testing again" in out and f"{recorded:.2f}" in out
    assert (run_dir / ledger.LEDGER_NAME).read_text() == before
