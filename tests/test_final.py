"""The final stage on a tiny in-memory dataset: retrain rule, ledger entries, one look, the test guard."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import search
from results import final, ledger
from results.console import print_final
from results.final import final_epochs, retrain_and_test
from trainables.config import SELECTION_METRIC
from trainables.data import base
from trainables.data.images import ImageReadError
from trainables.data.splits import ClassSplit, fixed_split
from trainables.run_config import AUTO, RunConfig, default_top_k

PARAMS = {"param_lr": 1e-3, "param_weight_decay": 1e-4, "param_proxy_lr": 1e-1, "param_margin": 0.1,
          "param_alpha": 32.0}


def final_cfg(tmp_path, *flags: str) -> RunConfig:
    argv = ["--loss", "proxy_anchor", "--backbone", "glyphcnn", "--batch-size", "16", "--embedding-size", "8",
            "--out", str(tmp_path), *flags]
    return search.run_config(search.build_parser().parse_args(argv), argv)


def selected(best_epoch: int = 2) -> pd.DataFrame:
    return pd.DataFrame([{"number": 4, "state": "complete", f"best_{SELECTION_METRIC}": 0.5,
                          "best_epoch": best_epoch, **PARAMS}])


def test_auto_final_epochs_is_the_best_validation_epoch_and_a_number_is_kept() -> None:
    trial = pd.Series({"best_epoch": 3, "epochs": 10})
    assert final_epochs(trial, AUTO) == 3
    assert final_epochs(trial, 7) == 7


def test_an_auto_cosine_retrain_keeps_the_trials_horizon_and_a_fixed_one_its_own(blobs, tmp_path) -> None:
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    for name, flags, horizon in [("auto", [], 10), ("fixed", ["--final-epochs", "2"], None)]:
        run_dir = tmp_path / name
        run_dir.mkdir()
        cfg = final_cfg(run_dir, "--lr-schedule", "cosine", "--max-epochs", "10", *flags)
        retrain_and_test(run_dir, cfg, blobs, [split], selected(best_epoch=1), echo=lambda _: None)
        (entry,) = ledger.read(run_dir / ledger.LEDGER_NAME)
        assert entry["config"]["schedule_epochs"] == horizon


def test_top_k_default_is_one_on_glyphs_three_on_real_data_and_never_above_the_trials() -> None:
    assert default_top_k("glyphs", 8) == 1
    assert default_top_k("cub", 8) == 3
    assert default_top_k("sop", 2) == 2


def test_retrain_records_every_seed_with_what_reproduces_it(blobs, tmp_path) -> None:
    cfg = final_cfg(tmp_path, "--seeds", "2")
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    done = retrain_and_test(tmp_path, cfg, blobs, [split], selected(best_epoch=1), echo=lambda _: None)
    entries = ledger.read(tmp_path / ledger.LEDGER_NAME)
    assert len(done) == len(entries) == 2
    assert done["epochs"].tolist() == [1, 1]  # auto: the trial's best validation epoch
    assert [e["seed"] for e in entries] == [0, 1]
    for e in entries:
        assert e["config"]["epochs"] == 1 and e["config"]["loss_params"] == {"margin": 0.1, "alpha": 32.0}
        assert e["config_hash"] and e["dataset"]["sha256_16"] == blobs.fingerprint()["sha256_16"]
        assert e["split"] == {"fit": list(split.fit), "val": list(split.val),
                              "test": blobs.test_classes.tolist()}
        assert {"torch", "optuna", "ray", "python"} <= set(e["versions"]) and "code" in e
        assert e["selection"] == {"loss": "proxy_anchor", "rank": 1, "trial": 4, "state": "complete",
                                  SELECTION_METRIC: 0.5, "best_epoch": 1, "final_epochs": "auto"}
        assert 0 <= e["metrics"]["recall@1"] <= 1 and 0 <= e["metrics"]["nmi"] <= 1
    assert entries[0]["config_hash"] != entries[1]["config_hash"]  # the seed is part of the config
    assert all(e["device"] == e["test_device"] == final.device_name("cpu") for e in entries)
    kept = final.torch_load((tmp_path / final.FINAL_DIR / "config1-seed0.pt").read_bytes())["trainer"]
    assert "optimizer" not in kept and kept["epoch"] == 1  # a finished model: evaluation needs no AdamW state
    assert not blobs._test_unlocked  # the test half is closed again after the test stage


def test_a_tested_study_is_refused_before_retraining_with_the_recorded_result(blobs, tmp_path) -> None:
    path = tmp_path / ledger.LEDGER_NAME
    recorded = {"time": "2026-01-01T00:00:00+00:00", "seed": 0, "config_hash": "abc", "epochs": 3,
                "params": {"margin": 0.1}, "metrics": {"recall@1": 0.6543, "recall@2": 0.75},
                "selection": {"rank": 1, "trial": 0, SELECTION_METRIC: 0.5}}
    with ledger.locked(path):
        ledger.append(path, recorded)
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    with pytest.raises(ledger.TestAlreadyRecorded) as refused:
        # A split with a test class would fail in the retrain: the refusal must come first.
        retrain_and_test(tmp_path, final_cfg(tmp_path), blobs, [ClassSplit(split.fit, (*split.val, 11))], selected(),
                         echo=pytest.fail)
    message = str(refused.value)
    assert "already evaluated on 2026-01-01" in message and "65.43" in message and "--resume" in message
    assert ledger.read(path) == [recorded]


def test_the_retrain_cannot_reach_a_test_class(blobs, tmp_path) -> None:
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    leaky = ClassSplit(split.fit, (*split.val, int(blobs.test_classes[0])))
    with pytest.raises(base.TestAccessError, match="before the test stage"):
        retrain_and_test(tmp_path, final_cfg(tmp_path), blobs, [leaky], selected(), echo=pytest.fail)
    assert not (tmp_path / ledger.LEDGER_NAME).exists()


def test_final_table_shows_mean_and_sample_std_over_seeds() -> None:
    final = pd.DataFrame([{"config_rank": 1, "trial_number": 0, "seed": s, "epochs": 5,
                           f"best_{SELECTION_METRIC}": 0.5, "param_margin": 0.1, "test_recall@1": r}
                          for s, r in enumerate([0.60, 0.62, 0.64])])
    lines: list[str] = []
    print_final(final, [1], lines.append)
    std = np.std([60, 62, 64], ddof=1)
    assert f"62.00 ± {std:.2f}" in lines[1] and "margin=0.1" in lines[2]


def test_final_epochs_flag_takes_auto_or_a_positive_number(capsys) -> None:
    parse = search.build_parser().parse_args
    assert parse(["--loss", "ms"]).final_epochs == AUTO
    assert parse(["--loss", "ms", "--final-epochs", "7"]).final_epochs == 7
    with pytest.raises(SystemExit):
        parse(["--loss", "ms", "--final-epochs", "best"])
    assert "must be auto or a whole number of at least 1, but got best" in capsys.readouterr().err


def test_a_failed_test_stage_keeps_the_retrained_models_for_the_next_attempt(blobs, tmp_path, monkeypatch) -> None:
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    cfg = final_cfg(tmp_path, "--seeds", "2")
    evaluate = final.test_metrics

    def unreadable(*args: object) -> None:
        raise ImageReadError("test image 17.jpg is truncated")

    monkeypatch.setattr(final, "test_metrics", lambda *args: (_ for _ in ()).throw(PermissionError("not data")))
    with pytest.raises(PermissionError):  # not a data error: raised as it is, with its traceback
        retrain_and_test(tmp_path, cfg, blobs, [split], selected(best_epoch=2), echo=lambda _: None)
    monkeypatch.setattr(final, "test_metrics", unreadable)
    with pytest.raises(final.TestStageFailed, match="17.jpg") as stopped:
        retrain_and_test(tmp_path, cfg, blobs, [split], selected(best_epoch=2), echo=lambda _: None)
    assert "--resume" in str(stopped.value) and str(tmp_path / final.FINAL_DIR) in str(stopped.value)
    assert not (tmp_path / ledger.LEDGER_NAME).exists()
    kept = sorted(p.name for p in (tmp_path / final.FINAL_DIR).iterdir())
    assert kept == ["config1-seed0.pt", "config1-seed1.pt"]

    monkeypatch.setattr(final, "test_metrics", evaluate)  # the file is fixed: test the kept models, no retrain
    lines: list[str] = []
    again = retrain_and_test(tmp_path, cfg, blobs, [split], selected(best_epoch=2), echo=lines.append)
    assert all("kept" in line for line in lines) and len(lines) == 2
    assert len(ledger.read(tmp_path / ledger.LEDGER_NAME)) == 2

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    first = retrain_and_test(fresh, final_cfg(fresh, "--seeds", "2"), blobs, [split], selected(best_epoch=2),
                             echo=lambda _: None)
    cols = [c for c in first.columns if c.startswith("test_")]
    pd.testing.assert_frame_equal(again[cols], first[cols])  # the kept models are the models a retrain gives


def test_a_kept_model_of_another_config_is_retrained_not_tested(blobs, tmp_path, monkeypatch) -> None:
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    monkeypatch.setattr(final, "test_metrics", lambda *args: (_ for _ in ()).throw(ImageReadError("unreadable")))
    with pytest.raises(final.TestStageFailed):
        retrain_and_test(tmp_path, final_cfg(tmp_path), blobs, [split], selected(best_epoch=2), echo=lambda _: None)
    monkeypatch.undo()
    lines: list[str] = []
    done = retrain_and_test(tmp_path, final_cfg(tmp_path), blobs, [split], selected(best_epoch=1), echo=lines.append)
    assert done["epochs"].tolist() == [1] and "1 epochs in" in lines[0] and "kept" not in lines[0]


def test_a_retrain_that_fails_keeps_the_models_finished_before_it(blobs, tmp_path, monkeypatch) -> None:
    split = fixed_split(blobs.train_classes, 0.3, seed=0)
    cfg = final_cfg(tmp_path, "--seeds", "2")
    train = final.retrain

    def second_seed_crashes(dataset, job, device):
        if job[1].seed == 1:
            raise MemoryError("out of memory")
        return train(dataset, job, device)

    monkeypatch.setattr(final, "retrain", second_seed_crashes)
    with pytest.raises(MemoryError):
        retrain_and_test(tmp_path, cfg, blobs, [split], selected(best_epoch=1), echo=lambda _: None)
    assert [p.name for p in (tmp_path / final.FINAL_DIR).iterdir()] == ["config1-seed0.pt"]
    monkeypatch.undo()
    lines: list[str] = []
    retrain_and_test(tmp_path, cfg, blobs, [split], selected(best_epoch=1), echo=lines.append)
    assert "kept" in lines[0] and "1 epochs in" in lines[1]
