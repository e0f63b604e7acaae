"""`search.py --dataset cars|sop|inshop --data-root <fixture>` runs end to end (CUB: tests/test_leakage.py).

Tiny fixtures in each exact on-disk layout, a tiny budget and a small backbone: what is checked
is the wiring (loader -> split -> search -> retrain -> test once), including In-Shop's
query-against-gallery test and each dataset's Recall@K cut-offs.
"""
from __future__ import annotations

import pandas as pd
import pytest

import search
from data_fixtures import write_cars, write_inshop, write_sop
from results import ledger
from trainables.data import recipe

FIXTURES = {
    "cars": lambda root: write_cars(root, classes=(1, 2, 3, 4, 5, 6, 99, 100), per_class=6),
    "sop": lambda root: write_sop(root, train_classes=(1, 2, 3, 4, 5, 6), test_classes=(11319, 11320), per_class=6),
    "inshop": lambda root: write_inshop(root, train_items=(2, 3, 4, 5, 6, 7), test_items=(12, 13), per_item=4),
}


@pytest.mark.parametrize("dataset", [pytest.param("cars", marks=pytest.mark.slow),
                                     pytest.param("sop", marks=pytest.mark.slow), "inshop"])
def test_a_disk_dataset_runs_the_whole_pipeline(dataset: str, tmp_path) -> None:
    FIXTURES[dataset](tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--loss", "proxy_anchor", "--dataset", dataset, "--data-root", str(tmp_path / "data"),
            "--trials", "2", "--top-k", "1", "--max-epochs", "1", "--final-epochs", "1", "--backbone", "resnet18",
            "--image-size", "32", "--embedding-size", "16", "--batch-size", "12", "--warmup-epochs", "0",
            "--out", str(out)]
    assert search.main(argv) == 0
    final = pd.read_parquet(out / "final.parquet")
    assert len(final) == 1 and len(ledger.read(out / ledger.LEDGER_NAME)) == 1
    for k in recipe(dataset).ks:
        assert 0 <= final[f"test_recall@{k}"].iloc[0] <= 1
