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
from typing import Any

import numpy as np
import pandas as pd
import torch

from results import ledger, tables
from results.provenance import code_revision, versions
from trainables.config import SELECTION_METRIC, TrainConfig, config_hash, fixed_fields, learned_fields
from trainables.data.base import DMLDataset
from trainables.data.images import ImageReadError
from trainables.data.splits import ClassSplit, splits_record
from trainables.trainer import Trainer

# `--final-epochs auto`: retrain each config for as many epochs as its search trial needed to reach
# its best validation Recall@1 (the early-stopping point), counted in passes over the training set.
AUTO = "auto"
# `--top-k` when not given: glyphs is the minutes-long demo, so one config; on a real benchmark the
# top three, because 10 % of the training classes rank close configs noisily and the three test
# results show whether the validation ranking holds. The headline result stays config #1.
TOP_K = {"glyphs": 1}
TOP_K_REAL = 3
FINAL_DIR = "final"  # RUN/final/: the retrained models, kept until (and after) the test stage


def default_top_k(dataset: str, trials: int) -> int:
    """How many configs to retrain when `--top-k` is not given (never more than there are trials)."""
    return min(TOP_K.get(dataset, TOP_K_REAL), trials)


def final_epochs(trial: pd.Series, setting: int | str) -> int:
    """Retrain epochs for a selected trial: the fixed `--final-epochs`, or its best validation epoch.

    `auto` takes the 1-based epoch at which the trial's validation curve peaked (its earliest peak)
    and retrains that many passes over all training classes: the early-stopping point chosen on
    validation classes, never on the test set. Same passes, not same steps: the retrain set is
    larger (fit + validation classes), and per-epoch schedules keep their meaning: warm-up and StepLR
    as they are, cosine by keeping the trial's horizon (retrain_and_test sets schedule_epochs).
    A curve still rising at the budget's end gives the full budget; nothing extrapolates beyond it.
    """
    if setting == AUTO:
        return int(trial["best_epoch"])
    return int(setting)


def retrain_and_test(run_dir: Path, cfg: dict[str, Any], dataset: DMLDataset, folds: Sequence[ClassSplit],
                     selected: pd.DataFrame, echo: Any) -> pd.DataFrame:
    """Retrain each selected config on all training classes, then evaluate the test classes once.

    `folds` are the run's validation splits (one for the fixed protocol): the retrain uses their fit
    and validation classes together, and the ledger records them.

    Each retrained model is kept in RUN/final/ before the test stage: a test stage that fails (an
    unreadable test image) leaves the ledger empty, and `--resume` tests the kept models instead
    of retraining them.
    """
    ledger_path = run_dir / ledger.LEDGER_NAME
    if recorded := ledger.read(ledger_path):  # refuse before hours of retraining, not after
        raise already_tested(ledger_path, recorded)
    classes = np.concatenate([folds[0].fit, folds[0].val])  # every fold covers all the training classes
    picks = []
    stop_early = cfg["final_epochs"] == AUTO and cfg["lr_schedule"] == "cosine"  # on the trial's cosine
    for rank, (_, trial) in enumerate(selected.iterrows(), start=1):
        params = {c.removeprefix("param_"): trial[c] for c in tables.param_columns(selected) if pd.notna(trial[c])}
        for seed in range(cfg["seed"], cfg["seed"] + cfg["seeds"]):
            picks.append((rank, trial, TrainConfig.from_params(cfg["loss"], params, **fixed_fields(cfg) | {
                "epochs": final_epochs(trial, cfg["final_epochs"]), "seed": seed,
                **({"schedule_epochs": cfg["max_epochs"]} if stop_early else {})})))
    run = job_runner(cfg)
    models = retrained(run_dir / FINAL_DIR, picks, classes, dataset, run, echo)

    rows, entries = [], []
    with ledger.locked(ledger_path) as recorded:
        if recorded:  # another process tested this study while we retrained
            raise already_tested(ledger_path, recorded)
        # Evaluate every model before recording any: an unreadable test file then leaves the
        # ledger empty and the study testable once the file is fixed, not half-recorded.
        try:
            done = dict(run(evaluate_test, dataset,
                            [(classes, tc, model, cfg["ks"]) for (_, _, tc), (model, _) in zip(picks, models)]))
            results = [done[i] for i in range(len(picks))]
        except ImageReadError as err:  # a missing or corrupt test image, named in the message
            raise TestStageFailed(f"the test stage could not read its data, so nothing was recorded: {err}\n"
                                  f"The retrained models are kept in {run_dir / FINAL_DIR}: fix the data and run the "
                                  "same command with --resume to test them without retraining.") from err
        for (rank, trial, tc), (_, meta), (metrics, tested_on) in zip(picks, models, results):
            entry = ledger_entry(run_dir, cfg, dataset, folds, tc, metrics, rank, trial,
                                 {"device": meta["device"], "test_device": tested_on})
            entries.append(entry)
            rows.append({"config_rank": rank, "trial_number": int(trial["number"]),
                         "config_hash": entry["config_hash"], "seed": tc.seed, "epochs": tc.epochs,
                         f"best_{SELECTION_METRIC}": float(trial[f"best_{SELECTION_METRIC}"]),
                         "best_epoch": int(trial["best_epoch"]),
                         "train_seconds": meta["train_seconds"], **{f"param_{k}": v for k, v in tc.params().items()},
                         **{f"test_{k}": v for k, v in metrics.items()},
                         "config": json.dumps(tc.to_dict(), sort_keys=True)})
        ledger.append(ledger_path, *entries)
    final = pd.DataFrame(rows)
    tables.write(final, run_dir / "final.parquet")
    return final


def retrained(final_dir: Path, picks: list[tuple[int, pd.Series, TrainConfig]], classes: np.ndarray,
              dataset: DMLDataset, run: Runner, echo: Any) -> list[tuple[bytes, dict[str, Any]]]:
    """Every pick's retrained model as checkpoint bytes, with where and how long it trained.

    A model an earlier attempt kept in `final_dir` for exactly this config is reused; the rest are trained now.
    """
    paths = [final_dir / f"config{rank}-seed{tc.seed}.pt" for rank, _, tc in picks]
    models = {i: found for i, (path, (_, _, tc)) in enumerate(zip(paths, picks)) if (found := kept(path, tc))}
    todo = [i for i in range(len(picks)) if i not in models]
    final_dir.mkdir(exist_ok=True)
    for j, (model, meta) in run(retrain, dataset, [(classes, picks[i][2]) for i in todo]):
        i = todo[j]  # written as each finishes: a retrain that fails later does not take it along
        partial = paths[i].with_suffix(".tmp")
        partial.write_bytes(model)
        partial.replace(paths[i])  # whole or absent, even if the driver is stopped mid-write
        models[i] = model, meta
    for i, (rank, trial, tc) in enumerate(picks):
        meta = models[i][1]
        how = f"kept {paths[i]}" if i not in todo else \
            f"{tc.epochs} epochs in {meta['train_seconds']:.0f}s on {meta['device']}"
        echo(f"retrain: config #{rank} (trial {trial['number']}) seed {tc.seed}: {how}")
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


def job_runner(cfg: dict[str, Any]) -> Runner:
    """Where retrain and test jobs run: where the trials ran.

    On a Ray cluster or with GPU trials they are Ray tasks holding one trial's resources, so they
    land on the GPU workers (not the driver's CPU head) and run side by side; a local CPU search
    runs them here, in a process that has everything loaded, one at a time on all cores.
    """
    if cfg["address"] or cfg["gpus_per_trial"]:
        from trainables.ray_cluster import run_tasks

        return functools.partial(run_tasks, cpus=cfg["cpus_per_trial"], gpus=cfg["gpus_per_trial"],
                                 address=cfg["address"])
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


def ledger_entry(run_dir: Path, cfg: dict[str, Any], dataset: DMLDataset, folds: Sequence[ClassSplit], tc: TrainConfig,
                 metrics: dict[str, float], rank: int, trial: pd.Series, devices: dict[str, str]) -> dict[str, Any]:
    """One test evaluation with what reproduces it: config, seed, data, splits, versions, code, selection.

    `devices`: where the model was retrained ("device") and where it was tested ("test_device").
    """
    config = tc.to_dict()
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "study": str(run_dir.resolve()),
        "config": config, "config_hash": config_hash(learned_fields(config)), "seed": tc.seed,
        "params": tc.params(), "epochs": tc.epochs,
        "selection": {"rank": rank, "trial": int(trial["number"]), "state": str(trial["state"]),
                      SELECTION_METRIC: float(trial[f"best_{SELECTION_METRIC}"]),
                      "best_epoch": int(trial["best_epoch"]), "final_epochs": cfg["final_epochs"]},
        "dataset": dataset.fingerprint(), "split": splits_record(folds, dataset.test_classes),
        "versions": versions(), "code": code_revision(), **devices,
        "command": cfg["argv"], "metrics": metrics,
    }


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"


def ledger_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """Ledger entries as final.parquet-shaped rows, so one table printer serves both."""
    return pd.DataFrame([{
        "config_rank": e["selection"]["rank"], "trial_number": e["selection"]["trial"], "seed": e["seed"],
        "config_hash": e["config_hash"], "epochs": e["epochs"],
        f"best_{SELECTION_METRIC}": e["selection"][SELECTION_METRIC],
        **{f"param_{k}": v for k, v in e["params"].items()}, **{f"test_{k}": v for k, v in e["metrics"].items()},
    } for e in entries])


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; std is 0 for a single seed."""
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def pm_text(values: np.ndarray, sep: str = " ± ") -> str:
    """Values (already in %) as mean ± sample std over seeds, or the mean alone for one seed."""
    mean, std = mean_std(values)
    return f"{mean:.2f}{sep}{std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def param_text(name: str, value: Any) -> str:
    """One searched parameter as the result tables show it: floats to 4 significant digits."""
    return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"


def recall_ks(frame: pd.DataFrame) -> list[int]:
    return sorted(int(c.removeprefix("test_recall@")) for c in frame.columns if c.startswith("test_recall@"))


def print_final(final: pd.DataFrame, ks: list[int], echo: Any) -> None:
    """Per config: params, search validation R@1, retrain epochs, test Recall@K as mean ± std over seeds."""
    echo(f"{'config':>6} {'trial':>5} {'seeds':>5} {'epochs':>6} {'val R@1':>8} "
         + " ".join(f"{'test R@' + str(k):>14}" for k in ks))
    for rank, group in final.groupby("config_rank"):
        cells = [pm_text(100 * group[f"test_recall@{k}"].to_numpy()) for k in ks]
        echo(f"{'#' + str(rank):>6} {group['trial_number'].iloc[0]:>5} {len(group):>5} {group['epochs'].iloc[0]:>6} "
             f"{100 * group[f'best_{SELECTION_METRIC}'].iloc[0]:8.2f} " + " ".join(f"{c:>14}" for c in cells))
        params = {c.removeprefix("param_"): group[c].iloc[0] for c in tables.param_columns(group)}
        echo(f"{'':>6} " + ", ".join(param_text(k, v) for k, v in params.items()))
    if final["seed"].nunique() > 1:
        echo("(test: mean ± sample std over seeds; val R@1: the search trial's best epoch on validation classes)")


def recorded_text(entries: list[dict[str, Any]]) -> str:
    """The recorded result as the final table prints it, for messages."""
    lines: list[str] = []
    frame = ledger_frame(entries)
    print_final(frame, recall_ks(frame), lines.append)
    return "\n".join(lines)


def already_tested(path: Path, entries: list[dict[str, Any]]) -> ledger.TestAlreadyRecorded:
    """The refusal of a second test evaluation, showing the result that stands."""
    return ledger.TestAlreadyRecorded(path, entries, recorded_text(entries))


def print_recorded(run_dir: Path, entries: list[dict[str, Any]], echo: Any) -> None:
    """What `--resume` of a finished run shows: the ledger's result, not a new evaluation."""
    tested = entries[0]["time"]
    echo(f"{run_dir} was tested on {tested} ({len(entries)} ledger entries); not testing again. Recorded result "
         "(Recall in %):")
    echo(recorded_text(entries))
    echo(f"ledger: {run_dir / ledger.LEDGER_NAME}")
