"""Leakage proof: with every test-class image unreadable, search, selection and retrain still complete.

A CUB fixture whose test-class JPEGs are garbage goes through the real pipeline (search.main, Ray
trials, retrain). Any read of a test image before the test stage would fail a trial or the retrain;
instead the first failure is the test stage's, naming the file, and nothing is recorded.
"""
from __future__ import annotations

import contextlib
import io
import traceback

import pandas as pd
import pytest

import search
from data_fixtures import corrupt, write_cub
from results import ledger
from trainables.data.images import ImageReadError

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
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(ImageReadError) as failure:
        search.main(argv)
    return out, failure.value, stdout.getvalue(), test_files


def test_search_and_retrain_complete_without_the_test_images(leaky_run) -> None:
    out, _, printed, _ = leaky_run
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and set(trials["state"]) <= {"complete", "pruned"}  # no trial read a test image
    assert trials["epochs"].min() >= 1
    retrained = [line for line in printed.splitlines() if line.startswith("retrain: config #")]
    assert len(retrained) == 2  # top-k defaults to 3 on real data, capped at the 2 trials


def test_the_test_stage_fails_naming_the_unreadable_file_and_records_nothing(leaky_run) -> None:
    out, failure, _, test_files = leaky_run
    assert any(str(path) in str(failure) for path in test_files)
    assert "test_metrics" in {frame.name for frame in traceback.extract_tb(failure.__traceback__)}
    assert ledger.read(out / ledger.LEDGER_NAME) == [] and not (out / "final.parquet").exists()

