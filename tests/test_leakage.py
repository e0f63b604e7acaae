"""Leakage proof: with every test-class image unreadable, search, selection and retrain still complete.

A CUB fixture whose test-class JPEGs are garbage goes through the real pipeline (search.main, Ray
trials, retrain). Any read of a test image before the test stage would fail a trial or the retrain;
instead the first failure is the test stage's, naming the file, and nothing is recorded. Once the
images are repaired, --resume tests the retrained models it kept, without retraining.
"""
from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

import search
from data_fixtures import corrupt, write_cub, write_jpeg
from results import ledger

TRAIN, TEST = (1, 2, 3, 4, 5, 6), (101, 102, 103)


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    written = write_cub(root, classes=TRAIN + TEST, per_class=6)
    test_files = written.paths_of(set(TEST))
    for path in test_files:
        corrupt(path)
    out = tmp_path_factory.mktemp("leaky") / "run"
    argv = ["--loss", "proxy_anchor", "--dataset", "cub", "--data-root", str(root), "--trials", "2",
            "--max-epochs", "2", "--backbone", "resnet18", "--image-size", "32", "--embedding-size", "16",
            "--batch-size", "12", "--seed", "3", "--out", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = search.main(argv)
    return out, code, stdout.getvalue(), stderr.getvalue(), test_files, argv


def test_search_and_retrain_complete_without_the_test_images(leaky_run) -> None:
    out, _, printed, _, _, _ = leaky_run
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and set(trials["state"]) <= {"complete", "pruned"}  # no trial read a test image
    assert trials["epochs"].min() >= 1
    retrained = [line for line in printed.splitlines() if line.startswith("retrain: config #")]
    assert len(retrained) == 2  # top-k defaults to 3 on real data, capped at the 2 trials


def test_the_test_stage_fails_naming_the_unreadable_file_and_records_nothing(leaky_run) -> None:
    out, code, _, error, test_files, _ = leaky_run
    assert code == 1 and "the test stage could not read its data" in error  # raised around the test stage only
    assert any(str(path) in error for path in test_files)
    assert "--resume" in error and str(out / "final") in error
    assert ledger.read(out / ledger.LEDGER_NAME) == [] and not (out / "final.parquet").exists()


def test_after_the_images_are_repaired_resume_tests_the_kept_models_without_retraining(leaky_run) -> None:
    out, _, _, _, test_files, argv = leaky_run
    for seed, path in enumerate(test_files):
        write_jpeg(path, seed)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert search.main([*argv, "--resume"]) == 0
    printed = stdout.getvalue()
    retrained = [line for line in printed.splitlines() if line.startswith("retrain: config #")]
    assert len(retrained) == 2 and all("kept" in line for line in retrained)
    assert "test half's files changed" in printed
    entries = ledger.read(out / ledger.LEDGER_NAME)
    assert len(entries) == 2 and entries[0]["dataset"]["train_sha256_16"] == json.loads(
        (out / "config.json").read_text())["dataset"]["train_sha256_16"]
