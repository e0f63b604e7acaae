"""The Ray Tune side: the trial function, a pruning-aware Optuna searcher, progress lines, the Tuner.

This is the only module that imports Ray. A trial is a thin loop over the shared Trainer:
train one epoch, score the validation classes, checkpoint, `tune.report` (Ray's own
examples' shape). Optuna proposes the configs (TPE, define-by-run space), ASHA stops weak
trials at its rungs, and each stopped trial is told to Optuna as PRUNED (DESIGN §6).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from trainables.config import RAY_TRIAL_ID_ATTR, SELECTION_METRIC, SELECTION_MODE, TrainConfig
from trainables.data import build_dataset
from trainables.trainer import DivergedError, Trainer

CHECKPOINT_FILE = "trainer.pt"


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its config; shipped once to workers via tune.with_parameters."""

    loss: str
    dataset: str
    data_root: str | None
    image_size: int
    fit_classes: tuple[int, ...]
    val_classes: tuple[int, ...]
    ks: tuple[int, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields that are not searched
    threads: int = 1


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Train on the fit classes, report validation Recall@K after every epoch, checkpoint every epoch."""
    torch.set_num_threads(setup.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = build_dataset(setup.dataset, setup.data_root, setup.image_size)
    cfg = TrainConfig.from_params(setup.loss, config, **setup.fixed)
    trainer = Trainer(cfg, dataset.subset(setup.fit_classes, train=True), device=device)
    val_set = dataset.subset(setup.val_classes)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / CHECKPOINT_FILE)
    while trainer.epoch < cfg.epochs:
        start = time.perf_counter()
        try:
            train_loss = trainer.train_epoch()
        except DivergedError as err:
            # A diverging config is a bad point of the space, not a crash: report the worst score
            # so ASHA and TPE learn from it, and end the trial with the reason.
            tune.report({SELECTION_METRIC: 0.0, "diverged": str(err), "epoch": trainer.epoch + 1})
            return
        trained = time.perf_counter()
        metrics = trainer.evaluate(val_set, setup.ks)
        with tempfile.TemporaryDirectory() as d:
            trainer.save(Path(d) / CHECKPOINT_FILE)
            tune.report({
                **{f"val_{k}": v for k, v in metrics.items()},
                "train_loss": train_loss, "epoch": trainer.epoch,
                "train_seconds": trained - start, "eval_seconds": time.perf_counter() - trained,
            }, checkpoint=tune.Checkpoint.from_directory(d))


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna an ASHA-stopped trial is PRUNED, not COMPLETE.

    Ray's OptunaSearch tells every trial that ends without error as COMPLETE with its last
    value, so a config stopped after one epoch looks like a finished one with a low score and
    TPE's model of "good" is built from mixed budgets. Optuna records a PRUNED trial's last
    intermediate value (already reported each epoch) and TPE ranks pruned trials by the step
    they reached. Each Optuna trial also records its Ray trial id, linking study.db to ray/.
    """

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_t = max_t
        self._last_step: dict[str, int] = {}  # trial id -> last epoch reported to Optuna

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        self._last_step[trial_id] = result[TRAINING_ITERATION]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        step = (result or {}).get(TRAINING_ITERATION, 0)
        value = (result or {}).get(self.metric)
        ot_trial = self._ot_trials[trial_id]
        # Ray hands a trial's last result (the one ASHA stopped it on, or its max_t epoch) only to
        # on_trial_complete, never to on_trial_result: record it as the curve's last point too,
        # or a trial stopped at its first rung reaches Optuna with no value at all.
        if value is not None and self._last_step.get(trial_id) != step:
            ot_trial.report(value, step)
        if error or value is None or step >= self.max_t:
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class ProgressLines(tune.Callback):
    """One readable line per trial event, instead of Ray's wide status table."""

    def __init__(self, total: int, max_t: int, echo: Callable[[str], None] = print) -> None:
        self.total, self.max_t, self.echo = total, max_t, echo
        self.started = self.finished = 0
        self.best: float | None = None

    def _name(self, trial: Trial) -> str:
        return f"trial {trial.trial_id.split('_')[-1]}"

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.started += 1
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items()))
        self.echo(f"[{self.started}/{self.total}] {self._name(trial)} started: {params}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "failed" if trial.status == Trial.ERROR else None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "failed")

    def _finish(self, trial: Trial, outcome: str | None) -> None:
        self.finished += 1
        result = trial.last_result or {}
        value, epochs = result.get(SELECTION_METRIC), result.get(TRAINING_ITERATION, 0)
        if outcome is None:
            outcome = ("diverged" if "diverged" in result else
                       "finished" if epochs >= self.max_t else f"pruned at epoch {epochs}")
        if value is not None and outcome != "failed":
            self.best = value if self.best is None else max(self.best, value)
        shown = "n/a" if value is None else f"{value:.3f}"
        best = "n/a" if self.best is None else f"{self.best:.3f}"
        self.echo(f"[{self.finished}/{self.total} done] {self._name(trial)} {outcome}: "
                  f"val R@1 {shown} (best so far {best})")


@dataclass(frozen=True)
class SearchSettings:
    """How to search: budget, ASHA shape, resources and where Ray keeps its files."""

    trials: int
    max_epochs: int
    grace_period: int = 1
    reduction_factor: int = 3
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    seed: int = 0
    storage_path: str | None = None  # Ray's trial storage; None: <run dir>/ray on this machine


def tpe_sampler(trials: int, seed: int) -> optuna.samplers.TPESampler:
    """TPE whose random start-up phase fits the budget (Optuna's default of 10 would be all of a small study)."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=max(2, min(10, trials // 3)))


def run_search(run_dir: Path, setup: TrialSetup, space: Callable[[optuna.Trial], Any],
               first_points: list[dict[str, float]], settings: SearchSettings,
               echo: Callable[[str], None] = print) -> tune.ResultGrid:
    """Run the study: Optuna TPE proposals, ASHA stopping, trials in parallel under Ray Tune.

    The study lives in `run_dir/study.db` (optuna-dashboard reads it); Ray's experiment in
    `run_dir/ray` unless `settings.storage_path` points at storage every node reaches.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(run_dir / 'study.db').resolve()}")
    searcher = PruningAwareOptunaSearch(
        space=space, metric=SELECTION_METRIC, mode=SELECTION_MODE, points_to_evaluate=first_points,
        sampler=tpe_sampler(settings.trials, settings.seed), study_name="dmltune", storage=storage,
        max_t=settings.max_epochs)
    scheduler = ASHAScheduler(time_attr=TRAINING_ITERATION, max_t=settings.max_epochs,
                              grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    storage_path = settings.storage_path or str(run_dir.resolve())
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=SELECTION_METRIC, mode=SELECTION_MODE, search_alg=searcher,
                                    scheduler=scheduler, num_samples=settings.trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name="ray", storage_path=storage_path, verbose=0,
            callbacks=[ProgressLines(settings.trials, settings.max_epochs, echo)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1)),
    )
    return tuner.fit()


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start a local Ray (or join a cluster) quietly: no dashboard, no usage stats, our progress lines only."""
    import logging

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Tune's new console output prints its experiment banner even at verbose=0; the legacy
    # reporter honours verbose=0, leaving ProgressLines as the only per-trial output.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch of short trials triggers a "snapshot too often" warning that has
    # no action for the user; experiment state is still snapshotted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local single-user Ray: no token file
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
