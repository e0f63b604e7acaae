"""The final stage: retrain the selected configs on all training classes, then test them once.

The retrain never opens a test class (the dataset refuses it). The test stage opens the test
half inside the ledger's lock, evaluates every retrained model, and records each result with
what is needed to reproduce it; a study that already has ledger entries is not tested again.
"""
from __future__ import annotations

import functools
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from results import ledger, tables
from results.provenance import provenance
from trainables.atomic import write_atomic
from trainables.config import SELECTION_METRIC, TrainConfig, config_hash, learned_fields
from trainables.data.base import DMLDataset
from trainables.data.images import ImageReadError
from trainables.data.packed import DataTooLarge, for_workers
from trainables.data.splits import ClassSplit
from trainables.run_config import AUTO, RunConfig
from trainables.study import LOSS_KEY
from trainables.trainer import Trainer

FINAL_DIR = "final"  # RUN/final/: the retrained models, kept until (and after) the test stage


class Pick(NamedTuple):
    """One model the final stage trains and tests: a selected trial's config under one seed."""

    rank: int  # the config's place in the selection, 1 = the result
    trial: pd.Series  # its trials.parquet row
    config: TrainConfig


def final_epochs(trial: pd.Series, setting: int | str) -> int:
    """Retrain epochs for a selected trial: the fixed `--final-epochs`, or its best validation epoch.

    `auto` takes the 1-based epoch at which the trial's validation curve peaked (its earliest peak)
    and retrains that many passes over all training classes: the early-stopping point chosen on
    validation classes, never on the test set. Same passes, not same steps: the retrain set is
    larger (fit + validation classes), and per-epoch schedules keep their meaning: warm-up and StepLR
    as they are, cosine by keeping the trial's horizon (`plan` sets schedule_epochs).
    A curve still rising at the budget's end gives the full budget; nothing extrapolates beyond it.
    """
    if setting == AUTO:
        return int(trial["best_epoch"])
    return int(setting)


def retrain_and_test(run_dir: Path, cfg: RunConfig, dataset: DMLDataset, folds: Sequence[ClassSplit],
                     selected: pd.DataFrame, echo: Any) -> pd.DataFrame:
    """Retrain each selected config on all training classes, then evaluate the test classes once.

    `folds` are the run's validation splits (one for the fixed protocol): the retrain uses their fit
    and validation classes together, and the ledger records them.

    Each retrained model is kept in RUN/final/ before the test stage: a test stage that fails (an
    unreadable test image) leaves the ledger empty, and `--resume` tests the kept models instead
    of retraining them.
    """
    ledger_path = run_dir / ledger.LEDGER_NAME
    ledger.refuse_if_tested(ledger_path)  # before hours of retraining, not after
    classes = np.concatenate([folds[0].fit, folds[0].val])  # every fold covers all the training classes
    picks = plan(cfg, selected)
    run = job_runner(cfg)
    # Jobs get the decoded training half the trials got (packed.py): no job opens --data-root.
    models = retrained(run_dir / FINAL_DIR, picks, classes, for_workers(dataset), run, echo,
                       tournament=cfg.tournament)
    with ledger.locked(ledger_path) as recorded:
        ledger.refuse_if_tested(ledger_path, recorded)  # another process tested this study while we retrained
        results = tested(run_dir, picks, [model for model, _ in models], classes, dataset, run, list(cfg.ks))
        entries, final = record(run_dir, cfg, dataset, folds, picks, [meta for _, meta in models], results)
        ledger.append(ledger_path, *entries)
    tables.write(final, run_dir / "final.parquet")
    return final


def plan(cfg: RunConfig, selected: pd.DataFrame) -> list[Pick]:
    """Every (selected config, seed) to retrain, with its TrainConfig: the trial's point on the run's fixed fields."""
    stop_early = cfg.final_epochs == AUTO and cfg.lr_schedule == "cosine"  # on the trial's cosine
    # A config's rank counts within its loss: a tournament retrains each loss's config #1 (and #2...).
    ranks = (selected.groupby(LOSS_KEY, sort=False).cumcount() + 1 if LOSS_KEY in selected
             else range(1, len(selected) + 1))
    picks = []
    for rank, (_, trial) in zip(ranks, selected.iterrows()):
        loss = trial[LOSS_KEY] if LOSS_KEY in trial else cfg.loss
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            picks.append(Pick(int(rank), trial, TrainConfig.from_params(loss, tables.row_params(trial), **(
                cfg.train_fields() | {"epochs": final_epochs(trial, cfg.final_epochs), "seed": seed}
                | ({"schedule_epochs": cfg.max_epochs} if stop_early else {})))))
    return picks


def tested(run_dir: Path, picks: list[Pick], models: list[bytes], classes: np.ndarray, dataset: DMLDataset,
           run: Runner, ks: list[int]) -> list[tuple[dict[str, float], str]]:
    """Each retrained model's test metrics and the device it was tested on, in `picks` order.

    Every model is evaluated before any is recorded: an unreadable test file then leaves the ledger
    empty and the study testable once the file is fixed, not half-recorded.
    """
    try:
        done = dict(run(evaluate_test, for_workers(dataset, test=True),  # the test half, decoded only now
                        [(classes, pick.config, model, ks) for pick, model in zip(picks, models)]))
    except (ImageReadError, DataTooLarge) as err:  # a missing or corrupt test image, named in the message
        raise TestStageFailed(f"the test stage could not read its data, so nothing was recorded: {err}\n"
                              f"The retrained models are kept in {run_dir / FINAL_DIR}: fix the data and run the "
                              "same command with --resume to test them without retraining.") from err
    return [done[i] for i in range(len(picks))]


def record(run_dir: Path, cfg: RunConfig, dataset: DMLDataset, folds: Sequence[ClassSplit], picks: list[Pick],
           metas: list[dict[str, Any]], results: list[tuple[dict[str, float], str]],
           ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The ledger entries and final.parquet's rows of the tested models (`metas`: where and how long each trained)."""
    entries, rows = [], []
    for pick, meta, (metrics, tested_on) in zip(picks, metas, results):
        trial, tc = pick.trial, pick.config
        entry = ledger_entry(run_dir, cfg, dataset, folds, pick, metrics,
                             {"device": meta["device"], "test_device": tested_on})
        entries.append(entry)
        rows.append({LOSS_KEY: tc.loss, "config_rank": pick.rank, "trial_number": int(trial["number"]),
                     "config_hash": entry["config_hash"], "seed": tc.seed, "epochs": tc.epochs,
                     f"best_{SELECTION_METRIC}": float(trial[f"best_{SELECTION_METRIC}"]),
                     "best_epoch": int(trial["best_epoch"]),
                     "train_seconds": meta["train_seconds"], **tables.param_cells(tc.params()),
                     **{f"test_{k}": v for k, v in metrics.items()},
                     "config": json.dumps(tc.to_dict(), sort_keys=True)})
    return entries, pd.DataFrame(rows)


def retrained(final_dir: Path, picks: list[Pick], classes: np.ndarray, dataset: DMLDataset, run: Runner,
              echo: Any, tournament: bool = False) -> list[tuple[bytes, dict[str, Any]]]:
    """Every pick's retrained model as checkpoint bytes, with where and how long it trained.

    A model an earlier attempt kept in `final_dir` for exactly this config is reused; the rest are trained now.
    A tournament's file and line names carry the loss (each loss has its own config #1).
    """
    losses = [pick.config.loss if tournament else None for pick in picks]
    paths = [final_dir / f"{f'{loss}-' if loss else ''}config{pick.rank}-seed{pick.config.seed}.pt"
             for loss, pick in zip(losses, picks)]
    models = {i: found for i, (path, pick) in enumerate(zip(paths, picks)) if (found := kept(path, pick.config))}
    todo = [i for i in range(len(picks)) if i not in models]
    final_dir.mkdir(exist_ok=True)
    for j, (model, meta) in run(retrain, dataset, [(classes, picks[i].config) for i in todo]):
        i = todo[j]  # written as each finishes: a retrain that fails later does not take it along
        write_atomic(paths[i], lambda tmp: tmp.write_bytes(model))  # whole or absent, even if stopped mid-write
        models[i] = model, meta
    for i, (rank, trial, tc) in enumerate(picks):
        meta = models[i][1]
        how = f"kept {paths[i]}" if i not in todo else \
            f"{tc.epochs} epochs in {meta['train_seconds']:.0f}s on {meta['device']}"
        echo(f"retrain: {f'{losses[i]} ' if losses[i] else ''}config #{rank} (trial {trial['number']}) seed "
             f"{tc.seed}: {how}")
    return [models[i] for i in range(len(picks))]


def kept(path: Path, tc: TrainConfig) -> tuple[bytes, dict[str, Any]] | None:
    """The model an earlier attempt retrained for exactly this config, if it is there."""
    if not path.exists():
        return None
    model = path.read_bytes()
    checkpoint = torch_load(model)
    state = checkpoint["trainer"]
    if learned_fields(state["config"]) != learned_fields(tc.to_dict()) or state["epoch"] != tc.epochs:
        return None
    return model, _meta(checkpoint)


def _meta(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A retrain checkpoint's record of where and how long it trained."""
    return {k: v for k, v in checkpoint.items() if k != "trainer"}


def retrain(dataset: DMLDataset, job: tuple[np.ndarray, TrainConfig], device: str) -> tuple[bytes, dict[str, Any]]:
    """Train one config on `classes`; returns the checkpoint as bytes (loadable on any device) and, apart,
    its record of where and how long it trained, so the driver need not unpickle the model to read it."""
    classes, tc = job
    start = time.perf_counter()
    trainer = Trainer(tc, dataset.subset(classes, train=True), device=device)
    while trainer.epoch < tc.epochs:
        trainer.train_epoch()
    meta = {"train_seconds": time.perf_counter() - start, "device": device_name(device)}
    buffer = io.BytesIO()
    torch.save({"trainer": trainer.state_dict(optimizer=False), **meta}, buffer)
    return buffer.getvalue(), meta


def evaluate_test(dataset: DMLDataset, job: tuple[np.ndarray, TrainConfig, bytes, list[int]],
                  device: str) -> tuple[dict[str, float], str]:
    """Evaluate one retrained model on the test half (the only code that opens it); also where it ran."""
    classes, tc, model, ks = job
    trainer = Trainer(tc, dataset.subset(classes, train=True), device=device)
    trainer.load_state_dict(torch_load(model, device)["trainer"])
    with dataset.test_access():
        return test_metrics(trainer, dataset, ks), device_name(device)


def torch_load(model: bytes, device: str = "cpu") -> dict[str, Any]:
    return torch.load(io.BytesIO(model), map_location=device, weights_only=True)


# (job, dataset, items) -> (index, job(dataset, items[index], device)) for every item, as each finishes.
Runner = Callable[..., Iterator[tuple[int, Any]]]


def job_runner(cfg: RunConfig) -> Runner:
    """Where retrain and test jobs run: where the trials ran.

    On a Ray cluster or with GPU trials they are Ray tasks holding one trial's resources, so they
    land on the GPU workers (not the driver's CPU head) and run side by side; a local CPU search
    runs them here, in a process that has everything loaded, one at a time on all cores.
    """
    if cfg.address or cfg.gpus_per_trial:
        from trainables.ray_cluster import run_tasks

        return functools.partial(run_tasks, cpus=cfg.cpus_per_trial, gpus=cfg.gpus_per_trial, address=cfg.address)
    return run_here


def run_here(job: Callable[..., Any], dataset: DMLDataset, items: list[Any]) -> Iterator[tuple[int, Any]]:
    """The jobs one after another in this process, each result handed on as soon as it exists."""
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return ((i, job(dataset, item, device)) for i, item in enumerate(items))


class TestStageFailed(RuntimeError):
    """The test stage stopped on a data error before recording anything; the message says how to go on."""


def test_metrics(trainer: Trainer, dataset: DMLDataset, ks: list[int]) -> dict[str, float]:
    """Recall@K, MAP@R and NMI of the test half: every test item against the others, or queries against
    the gallery (NMI then clusters both together)."""
    if dataset.test_query is not None and dataset.test_gallery is not None:
        return trainer.evaluate(dataset.items(dataset.test_query), ks, gallery=dataset.items(dataset.test_gallery),
                                with_nmi=True)
    return trainer.evaluate(dataset.subset(dataset.test_classes), ks, with_nmi=True)


def ledger_entry(run_dir: Path, cfg: RunConfig, dataset: DMLDataset, folds: Sequence[ClassSplit], pick: Pick,
                 metrics: dict[str, float], devices: dict[str, str]) -> dict[str, Any]:
    """One test evaluation with what reproduces it: config, seed, data, splits, versions, code, selection.

    `devices`: where the model was retrained ("device") and where it was tested ("test_device").
    """
    trial, config = pick.trial, pick.config.to_dict()
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "study": str(run_dir.resolve()),
        "config": config, "config_hash": config_hash(learned_fields(config)), "seed": pick.config.seed,
        "params": pick.config.params(), "epochs": pick.config.epochs,
        "selection": {LOSS_KEY: pick.config.loss, "rank": pick.rank, "trial": int(trial["number"]),
                      "state": str(trial["state"]),
                      SELECTION_METRIC: float(trial[f"best_{SELECTION_METRIC}"]),
                      "best_epoch": int(trial["best_epoch"]), "final_epochs": cfg.final_epochs},
        **provenance(dataset, folds), **devices, "command": list(cfg.argv), "metrics": metrics,
    }


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
