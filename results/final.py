"""The final stage: retrain the selected configs on all training classes, then test them once.

The retrain never opens a test class (the dataset refuses it). The test stage opens the test
half inside the ledger's lock, evaluates every retrained model, and records each result with
what is needed to reproduce it; a study that already has ledger entries is not tested again.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from results import ledger, tables
from results.provenance import code_revision, versions
from trainables.config import SELECTION_METRIC, TrainConfig, config_hash, fixed_fields
from trainables.data.base import DMLDataset
from trainables.data.splits import ClassSplit
from trainables.trainer import Trainer


def retrain_and_test(run_dir: Path, cfg: dict[str, Any], dataset: DMLDataset, split: ClassSplit,
                     selected: pd.DataFrame, echo: Any) -> pd.DataFrame:
    """Retrain each selected config on all training classes, then evaluate the test classes once."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    all_train = dataset.subset(np.concatenate([split.fit, split.val]), train=True)
    models = []
    for rank, (_, trial) in enumerate(selected.iterrows(), start=1):
        params = {c.removeprefix("param_"): trial[c] for c in tables.param_columns(selected) if pd.notna(trial[c])}
        for seed in range(cfg["seed"], cfg["seed"] + cfg["seeds"]):
            tc = TrainConfig.from_params(cfg["loss"], params, **fixed_fields(cfg) | {
                "epochs": cfg["final_epochs"], "seed": seed})
            start = time.perf_counter()
            trainer = Trainer(tc, all_train, device=device)
            while trainer.epoch < tc.epochs:
                trainer.train_epoch()
            echo(f"retrain: config #{rank} (trial {trial['number']}) seed {seed}: "
                 f"{tc.epochs} epochs in {time.perf_counter() - start:.0f}s")
            models.append((rank, trial, tc, trainer, time.perf_counter() - start))

    ledger_path = run_dir / ledger.LEDGER_NAME
    rows = []
    with ledger.locked(ledger_path) as recorded:
        if recorded:
            raise ledger.TestAlreadyRecorded(ledger_path, recorded)
        with dataset.test_access():
            for rank, trial, tc, trainer, seconds in models:
                metrics = test_metrics(trainer, dataset, cfg["ks"])
                entry = ledger_entry(run_dir, cfg, dataset, split, tc, metrics)
                ledger.append(ledger_path, entry)
                rows.append({"config_rank": rank, "trial_number": int(trial["number"]),
                             "config_hash": entry["config_hash"], "seed": tc.seed, "epochs": tc.epochs,
                             f"best_{SELECTION_METRIC}": float(trial[f"best_{SELECTION_METRIC}"]),
                             "train_seconds": seconds, **{f"param_{k}": v for k, v in tc.params().items()},
                             **{f"test_{k}": v for k, v in metrics.items()},
                             "config": json.dumps(tc.to_dict(), sort_keys=True)})
    final = pd.DataFrame(rows)
    tables.write(final, run_dir / "final.parquet")
    return final


def test_metrics(trainer: Trainer, dataset: DMLDataset, ks: list[int]) -> dict[str, float]:
    """Recall@K of the test half: every test item against the others, or queries against the gallery."""
    if dataset.test_query is not None and dataset.test_gallery is not None:
        return trainer.evaluate(dataset.items(dataset.test_query), ks, gallery=dataset.items(dataset.test_gallery))
    return trainer.evaluate(dataset.subset(dataset.test_classes), ks)


def ledger_entry(run_dir: Path, cfg: dict[str, Any], dataset: DMLDataset, split: ClassSplit, tc: TrainConfig,
                 metrics: dict[str, float]) -> dict[str, Any]:
    config = tc.to_dict()
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "study": str(run_dir.resolve()),
        "config": config, "config_hash": config_hash(config), "seed": tc.seed,
        "dataset": dataset.fingerprint(), "split": split.to_dict() | {"test": [int(c) for c in dataset.test_classes]},
        "versions": versions(), "code": code_revision(), "command": cfg["argv"], "metrics": metrics,
    }


def print_final(final: pd.DataFrame, ks: list[int], echo: Any) -> None:
    """Per config: params, validation R@1 and test Recall@K as mean ± std over seeds."""
    metric_cols = [f"test_recall@{k}" for k in ks]
    echo(f"{'config':>6} {'seeds':>5} {'val R@1':>8} " + " ".join(f"{'test R@' + str(k):>14}" for k in ks))
    for rank, group in final.groupby("config_rank"):
        cells = []
        for col in metric_cols:
            values = 100 * group[col].to_numpy()
            cells.append(f"{values.mean():6.2f} ± {values.std():5.2f}" if len(values) > 1 else f"{values[0]:14.2f}")
        echo(f"{'#' + str(rank):>6} {len(group):>5} {100 * group[f'best_{SELECTION_METRIC}'].iloc[0]:8.2f} "
             + " ".join(f"{c:>14}" for c in cells))
        params = {c.removeprefix("param_"): group[c].iloc[0] for c in group.columns if c.startswith("param_")}
        echo(f"{'':>6} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in params.items()))


def print_recorded(run_dir: Path, entries: list[dict[str, Any]], echo: Any) -> None:
    echo(f"{run_dir} was already tested ({len(entries)} ledger entries); not testing again. Recorded result:")
    final_path = run_dir / "final.parquet"
    if final_path.exists():
        final = pd.read_parquet(final_path)
        print_final(final, sorted(int(c.removeprefix("test_recall@")) for c in final.columns
                                  if c.startswith("test_recall@")), echo)
    else:
        for e in entries:
            echo(f"  seed {e['seed']} config {e['config_hash']}: {e['metrics']}")
    echo(f"ledger: {run_dir / ledger.LEDGER_NAME}")
