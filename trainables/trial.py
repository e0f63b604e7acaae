"""One Ray Tune trial: a thin loop over the shared Trainer (docs/ray-optuna.md).

Train one epoch (one model per validation fold), score the validation classes, checkpoint,
`tune.report` (Ray's own examples' shape). The keys it reports are what the searcher, ASHA and
the progress lines read.
"""
from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from trainables.config import SELECTION_METRIC, TrainConfig
from trainables.data import build_dataset
from trainables.data.base import DMLDataset
from trainables.data.splits import ClassSplit
from trainables.ray_cluster import assigned_device
from trainables.study import DIVERGED, EPOCH, LOSS_KEY, RESUME_KEY
from trainables.trainer import DivergedError, Trainer

FOLD_METRIC = SELECTION_METRIC.removeprefix("val_")  # the selection metric as Trainer.evaluate names it


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its config; shipped once to workers via tune.with_parameters."""

    loss: str | None  # the searched loss; None in a tournament, whose trials carry theirs (LOSS_KEY)
    dataset: str
    data_root: str | None
    image_size: int
    # One split (fixed protocol) or the k-fold splits the search uses: a trial trains one model per
    # split and is scored by the mean over them.
    folds: tuple[ClassSplit, ...]
    ks: tuple[int, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields that are not searched
    threads: int = 1
    # The driver's decoded training half (packed.for_workers), which run_search swaps for its object-store
    # ref: trials then never open --data-root. None: each worker builds the dataset (glyphs, in memory).
    data: Any = None


def fold_checkpoint(fold: int) -> str:
    return f"fold-{fold}.pt"


@functools.lru_cache(maxsize=1)
def worker_dataset(name: str, root: str | None, image_size: int) -> DMLDataset:
    """The data set, loaded once per worker process: with reuse_actors one worker runs trial after trial."""
    return build_dataset(name, root, image_size)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Train one model per fold; after every epoch checkpoint them all and report the fold-mean Recall@K."""
    resume = config.get(RESUME_KEY, {})
    loss = config.get(LOSS_KEY, setup.loss)
    params = {k: v for k, v in config.items() if k not in (RESUME_KEY, LOSS_KEY)}
    torch.set_num_threads(setup.threads)
    gpu_ids, device = assigned_device()
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": gpu_ids, "device": device}
    dataset = ray.get(setup.data) if setup.data is not None else worker_dataset(setup.dataset, setup.data_root,
                                                                                setup.image_size)
    cfg = TrainConfig.from_params(loss, params, **setup.fixed)
    trainers = [Trainer(cfg, dataset.subset(fold.fit, train=True), device=device) for fold in setup.folds]
    val_sets = [dataset.subset(fold.val) for fold in setup.folds]
    # Ray's own checkpoint (a retry after a worker died) is newer than the one an interrupted study left.
    checkpoint = tune.get_checkpoint() or (tune.Checkpoint(resume["checkpoint"]) if "checkpoint" in resume else None)
    if checkpoint:
        with checkpoint.as_directory() as d:
            for i, trainer in enumerate(trainers):
                trainer.load(Path(d) / fold_checkpoint(i))
    while (epoch := trainers[0].epoch + 1) <= cfg.epochs:
        start = time.perf_counter()
        try:
            losses = [trainer.train_epoch() for trainer in trainers]
        except DivergedError as err:
            # A diverging config is a bad point of the space, not a crash: report the worst score
            # so ASHA and TPE learn from it, and end the trial with the reason.
            tune.report({SELECTION_METRIC: 0.0, DIVERGED: str(err), EPOCH: epoch,
                         "train_seconds": time.perf_counter() - start, "eval_seconds": 0.0, **placement})
            return
        trained = time.perf_counter()
        per_fold = [trainer.evaluate(val, setup.ks) for trainer, val in zip(trainers, val_sets)]
        metrics = {f"val_{k}": float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}
        evaluated = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            for i, trainer in enumerate(trainers):
                trainer.save(Path(d) / fold_checkpoint(i))
            tune.report({
                **metrics, f"{SELECTION_METRIC}_folds": [m[FOLD_METRIC] for m in per_fold],
                "train_loss": float(np.mean(losses)), EPOCH: epoch,
                "train_seconds": trained - start, "eval_seconds": evaluated - trained, **placement,
            }, checkpoint=tune.Checkpoint.from_directory(d))
